-- wrk script for bench/run.py: POSTs the body in $BENCH_BODY_FILE to
-- $BENCH_PATH on every request (keep-alive) and prints one machine-readable
-- summary line at the end.

wrk.method = "POST"
wrk.path = os.getenv("BENCH_PATH") or "/model/bench.model-v1:0/converse"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"
wrk.headers["User-Agent"] = "bedrock-broker-bench/1"
-- What SDKs send and the sidecar strips (OpenAI SDK placeholder key).
wrk.headers["Authorization"] = "Bearer sk-bench-placeholder"

local path = os.getenv("BENCH_BODY_FILE")
if path then
  local f = assert(io.open(path, "rb"))
  wrk.body = f:read("*a")
  f:close()
else
  wrk.body = "{}"
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_status":%d,"errors_timeout":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max))
end
