//! tonic integration, behind the `tonic` feature.

use crate::ThreadAffinity;

/// Lets tonic's router mount a wrapped gRPC service by the inner service's
/// name: `Server::builder().add_service(layer.service(svc))`.
impl<S: tonic::server::NamedService> tonic::server::NamedService for ThreadAffinity<S> {
    const NAME: &'static str = S::NAME;
}
