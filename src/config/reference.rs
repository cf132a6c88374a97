//! The configuration reference, `docs/configuration.md`, generated from
//! [`super::settings`] (`make generate`), so the documented flags,
//! variables and defaults are the ones the binary reads.

use std::fmt::Write;

use super::setting::{Setting, WhenUnset};
use super::settings::{self, limits, Variable};

/// Table-cell text: pipes escaped, and `<placeholders>` kept visible
/// (Markdown renderers drop unknown HTML tags); inside a code span an
/// entity would be shown as written, and the tag is shown as it is.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
        .split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                part.to_owned()
            } else {
                part.replace('<', "&lt;").replace('>', "&gt;")
            }
        })
        .collect::<Vec<_>>()
        .join("`")
}

fn settings_table(out: &mut String, rows: &[&[Setting]]) {
    out.push_str("| flag | environment | default | meaning |\n| --- | --- | --- | --- |\n");
    for s in rows.iter().flat_map(|r| r.iter()) {
        let env = if s.env.is_empty() {
            "—".to_owned()
        } else {
            s.env
                .iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", then ")
        };
        let default = match s.default {
            WhenUnset::Nothing => "—".to_owned(),
            WhenUnset::Value(v) => format!("`{v}`"),
            WhenUnset::Computed(v) => cell(v),
        };
        let _ = writeln!(
            out,
            "| `--{}` | {env} | {default} | {} |",
            s.flag,
            cell(s.help)
        );
    }
}

fn variables_table(out: &mut String, vars: &[Variable]) {
    out.push_str("| variable | meaning |\n| --- | --- |\n");
    for v in vars {
        let _ = writeln!(out, "| `{}` | {} |", v.name, cell(v.help));
    }
}

/// The whole page.
pub fn markdown() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         <!-- Generated from src/config/settings/ by `make generate`; do not edit. -->\n\n\
         Every flag also reads the environment variables listed next to it; a flag \
         wins over its variables, the first variable set wins over the next, and an \
         empty variable counts as unset. Every value is checked at start: all \
         problems are reported at once, each naming its flag or variable (a bad \
         `--log-format` first, on its own: it decides how the rest is printed), and \
         the process exits with status 2. Durations take a unit (`500ms`, `10s`, `2m`, \
         `1h`) and are at most `365d`; counts and sizes are whole numbers up to \
         1099511627776 (2^40); booleans accept `true`/`false` (also `yes`/`no`, \
         `on`/`off`, `1`/`0`, in any case). A `BEDROCK_BROKER_*` variable that \
         no setting reads (a misspelt name would otherwise leave its setting at the \
         default without a word) is logged as a warning at start, naming the \
         variable meant when one is a few letters away.\n\n",
    );
    out.push_str("## `bedrock-broker sidecar`\n\n");
    settings_table(
        &mut out,
        &[
            settings::sidecar::ALL,
            settings::aws::ALL,
            &[settings::log::FORMAT],
        ],
    );
    out.push_str(
        "\n### Environment variables without a flag\n\n\
         Standard AWS and Kubernetes variables keep the meaning they have in the AWS \
         SDKs, so a pod already set up for IRSA needs nothing more.\n\n",
    );
    variables_table(&mut out, settings::vars::ALL);
    out.push_str(
        "\n### Listener limits\n\n\
         Each listener bounds the time a client has to send its headers, idle \
         connections, how many connections it holds and the size of a request head; \
         the admin port, which other pods reach, also counts connections per peer \
         address. A connection over a limit is closed at once (see \
         [security.md](security.md)).\n\n",
    );
    settings_table(
        &mut out,
        &[
            &limits::PROXY.all(),
            &limits::ADMIN.all(),
            &[limits::ADMIN_PER_PEER],
            &limits::CREDENTIALS.all(),
        ],
    );
    out.push_str(
        "\n## `bedrock-broker credentials`\n\n\
         Reads the same AWS settings and variables as `sidecar`:\n\n",
    );
    settings_table(
        &mut out,
        &[
            settings::aws::ALL,
            &[
                settings::sidecar::ALLOW_PLAINTEXT_UPSTREAM,
                settings::sidecar::USE_FIPS,
                settings::sidecar::USE_DUALSTACK,
                settings::log::FORMAT,
            ],
        ],
    );
    out.push_str("\n## `bedrock-broker webhook`\n\n");
    settings_table(
        &mut out,
        &[settings::webhook::ALL, &[settings::log::FORMAT]],
    );
    out.push_str(
        "\n### Listener limits\n\n\
         The API server's connections and the webhook's admin port; connections are \
         counted per peer from the TLS handshake on.\n\n",
    );
    settings_table(
        &mut out,
        &[
            &limits::WEBHOOK.all(),
            &[
                limits::WEBHOOK_PER_PEER,
                limits::WEBHOOK_TLS_HANDSHAKE_TIMEOUT,
            ],
            &limits::WEBHOOK_ADMIN.all(),
            &[limits::WEBHOOK_ADMIN_PER_PEER],
        ],
    );
    out.push_str(
        "\n### Injected sidecar defaults (`webhook` and `inject`)\n\n\
         Pod annotations override these one by one (see [injection.md](injection.md)).\n\n",
    );
    settings_table(&mut out, &[settings::injected::ALL]);
    out.push_str(
        "\n### Injection policy (`webhook` and `inject`)\n\n\
         Pods cannot override these (see [security.md](security.md)).\n\n",
    );
    settings_table(&mut out, &[settings::policy::ALL]);
    out.push_str(
        "\n## `bedrock-broker inject`\n\nAlso takes the injected sidecar defaults above.\n\n",
    );
    settings_table(&mut out, &[settings::inject::ALL]);
    out.push_str(OTHER_VARIABLES);
    out
}

/// Variables read by the libraries the binary builds on rather than by
/// its own settings, so that this page names everything the process reads.
const OTHER_VARIABLES: &str = "
## Read by the libraries underneath

| variable | read by | meaning |
| --- | --- | --- |
| `AWS_CONTAINER_AUTHORIZATION_TOKEN`, `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` | `--credential-source container` (aws-config) | the token sent to the container credentials endpoint |
| `AWS_CONFIG_FILE`, `AWS_SHARED_CREDENTIALS_FILE` | `--credential-source profile` (aws-config) | where the shared config and credentials files are |
| `AWS_EC2_METADATA_SERVICE_ENDPOINT` | `--credential-source imds` (aws-config) | the instance metadata endpoint |
| `TOKIO_WORKER_THREADS` | every command but `inject` (the tokio runtime) | worker threads, a whole number above 0 (checked at start, exit 2 otherwise, on any node); by default one per CPU the container may use; on one CPU a single thread, whatever it says ([operations.md](operations.md)) |
| `KUBECONFIG` | `webhook` | the cluster to read namespaces, ServiceAccounts and LimitRanges from when not running in one (kube's config discovery) |
";
