"""The Bedrock endpoint the sidecar calls when none is given, judged by
botocore's own endpoint rules: every partition has its DNS suffix
(`amazonaws.com.cn` in China, `amazonaws.eu` in the European Sovereign
Cloud...), with FIPS and dual-stack as AWS names them."""

from __future__ import annotations

import boto3
import pytest
from botocore.config import Config

from conftest import _read_listening_line

REGIONS = [
    "us-east-1",
    "us-gov-west-1",
    "cn-north-1",
    "cn-northwest-1",
    "eusc-de-east-1",
    "us-iso-east-1",
    "us-isob-east-1",
    "eu-isoe-west-1",
    "us-isof-south-1",
]


class Sent(Exception):
    pass


def botocore_endpoint(region: str, fips: bool, dualstack: bool) -> str:
    """Where botocore sends a call: its endpoint rules run per request
    (`meta.endpoint_url` is the older, pre-rules guess)."""
    client = boto3.client(
        "bedrock-runtime",
        region_name=region,
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="example",
        config=Config(use_fips_endpoint=fips, use_dualstack_endpoint=dualstack, retries={"max_attempts": 1}),
    )

    def stop(request, **_):
        raise Sent(request.url)

    client.meta.events.register("before-send", stop)
    with pytest.raises(Sent) as sent:
        client.converse(modelId="m", messages=[{"role": "user", "content": [{"text": "x"}]}])
    url = str(sent.value.args[0])
    return url[: url.index("/model/")]


# botocore builds no dual-stack client there (its older endpoint data
# names no such variant), so it cannot judge those two.
NO_DUALSTACK_JUDGE = {"eu-isoe-west-1", "us-isof-south-1"}
CASES = [
    (region, fips, dualstack)
    for region in REGIONS
    for fips in (False, True)
    for dualstack in (False, True)
    if not (dualstack and region in NO_DUALSTACK_JUDGE)
]


@pytest.mark.parametrize("region,fips,dualstack", CASES)
def test_the_default_endpoint_is_the_one_botocore_resolves(start_sidecar, region, fips, dualstack):
    sidecar = start_sidecar(
        {
            "AWS_REGION": region,
            "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
            "AWS_SECRET_ACCESS_KEY": "example",
            "AWS_USE_FIPS_ENDPOINT": str(fips).lower(),
            "AWS_USE_DUALSTACK_ENDPOINT": str(dualstack).lower(),
        },
        wait_ready=False,
    )
    line = _read_listening_line(sidecar.log_path)
    assert line["upstream"] == botocore_endpoint(region, fips, dualstack)
