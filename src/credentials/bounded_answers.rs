//! Answers to the credential calls, read only up to a bound.
//!
//! The calls are STS's, and the aws-config sources' container and
//! instance-metadata endpoints'.
//! The SDK reads an answer whole before parsing it, with no limit of its
//! own: an STS (or a relay in its place) padding a valid answer with
//! 400 MiB took the sidecar to 441 MiB, three times the memory limit the
//! injector sets, and so to an OOM kill at every restart. The bound sits
//! in the HTTP client every one of those calls goes through.

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::{
    RuntimeComponents, RuntimeComponentsBuilder,
};
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;

/// Largest answer read: STS's are about 2 KiB, a container or IMDS
/// endpoint's smaller still.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// `inner`, whose answers' bodies fail once past [`MAX_ANSWER_BYTES`].
pub fn bounded(inner: SharedHttpClient) -> SharedHttpClient {
    SharedHttpClient::new(Bounded(inner))
}

#[derive(Debug)]
struct Bounded(SharedHttpClient);

impl HttpClient for Bounded {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(BoundedConnector(
            self.0.http_connector(settings, components),
        ))
    }

    fn validate_base_client_config(
        &self,
        components: &RuntimeComponentsBuilder,
        cfg: &ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.validate_base_client_config(components, cfg)
    }

    fn validate_final_config(
        &self,
        components: &RuntimeComponents,
        cfg: &ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.validate_final_config(components, cfg)
    }

    fn connector_metadata(
        &self,
    ) -> Option<aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata> {
        self.0.connector_metadata()
    }
}

#[derive(Debug)]
struct BoundedConnector(SharedHttpConnector);

impl HttpConnector for BoundedConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let call = self.0.call(request);
        HttpConnectorFuture::new(async move {
            let response = call.await?;
            Ok(response.map(|body| {
                SdkBody::from_body_1_x(http_body_util::Limited::new(body, MAX_ANSWER_BYTES))
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
    use http_body_util::BodyExt;

    #[derive(Debug)]
    struct Answers(usize);

    impl HttpConnector for Answers {
        fn call(&self, _: HttpRequest) -> HttpConnectorFuture {
            let body = SdkBody::from(vec![b' '; self.0]);
            HttpConnectorFuture::ready(Ok(HttpResponse::new(200.try_into().unwrap(), body)))
        }
    }

    async fn read(size: usize) -> Result<usize, BoxError> {
        let connector = BoundedConnector(SharedHttpConnector::new(Answers(size)));
        let response = connector
            .call(HttpRequest::get("http://sts.test/").unwrap())
            .await
            .unwrap();
        let body = response.into_body().collect().await?;
        Ok(body.to_bytes().len())
    }

    #[tokio::test]
    async fn answers_past_the_bound_fail_and_the_rest_pass_whole() {
        assert_eq!(read(2048).await.unwrap(), 2048);
        assert_eq!(read(MAX_ANSWER_BYTES).await.unwrap(), MAX_ANSWER_BYTES);
        let err = read(MAX_ANSWER_BYTES + 1).await.unwrap_err();
        assert!(err.to_string().contains("length limit"), "{err}");
    }
}
