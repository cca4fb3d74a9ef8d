//! The tonic gRPC services and the server that hosts them.
//!
//! * [`admin`] — `onepd.admin.v1.AdminService`: destinations, their delivery
//!   ledgers, dead letters and replays;
//! * [`audiences`] — `onepd.audiences.v1.AudienceService`: audiences
//!   defined, evaluated for one person and previewed;
//! * [`audit`] — `onepd.audit.v1.AuditService`: read, follow, verify the log;
//! * [`auth`] — admin token checks shared by the services;
//! * [`destination`] — `onepd.destination.v1.DestinationAdapter`: a remote
//!   destination (the client) and the adapter server (`onepd adapter serve`);
//! * [`import`] — `onepd.import.v1.ImportService`: a whole file, streamed in
//!   chunks;
//! * [`ingest`] — `onepd.ingest.v1.IngestService`: the gRPC ingest API;
//! * [`profiles`] — `onepd.profiles.v1.ProfileService`: profiles, their
//!   timelines and merges;
//! * the standard `grpc.health.v1.Health` and reflection services.

pub mod admin;
pub mod audiences;
pub mod audit;
pub mod auth;
pub mod destination;
pub mod import;
pub mod ingest;
pub mod profiles;

use std::future::Future;
use std::sync::Arc;

use onepd_proto::admin::v1::admin_service_server::AdminServiceServer;
use onepd_proto::audiences::v1::audience_service_server::AudienceServiceServer;
use onepd_proto::audit::v1::audit_service_server::AuditServiceServer;
use onepd_proto::import::v1::import_service_server::ImportServiceServer;
use onepd_proto::ingest::v1::ingest_service_server::IngestServiceServer;
use onepd_proto::profiles::v1::profile_service_server::ProfileServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

use crate::EventLog;
use crate::audiences::Audiences;
use crate::ingest::Ingest;
use crate::profiles::ProfileReader;
use admin::AdminApi;
use audiences::AudiencesApi;
use audit::AuditApi;
use auth::TokenRegistry;
use import::ImportApi;
use ingest::IngestApi;
use profiles::ProfilesApi;

/// A failure to start or run the gRPC server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not read the descriptors.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The server stopped with a transport error.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The services [`serve`] serves besides reflection, as reflection lists
/// them. The descriptor set holds every onepd protocol, including the
/// destination adapter protocol, which only adapters serve; reflection must
/// not advertise what this server does not answer.
pub const SERVED: [&str; 7] = [
    "onepd.admin.v1.AdminService",
    "onepd.audiences.v1.AudienceService",
    "onepd.audit.v1.AuditService",
    "onepd.import.v1.ImportService",
    "onepd.ingest.v1.IngestService",
    "onepd.profiles.v1.ProfileService",
    "grpc.health.v1.Health",
];

/// A reflection service's builder listing [`SERVED`] and `itself` (its own
/// service name).
fn reflection_of(itself: &str) -> tonic_reflection::server::Builder<'static> {
    SERVED.iter().chain([&itself]).fold(
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(onepd_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
        |builder, name| builder.with_service_name(*name),
    )
}

/// The profile readers the services read through.
#[derive(Clone)]
pub struct Readers {
    /// The primary's: what admin, audit, audiences and erasure read.
    pub profiles: ProfileReader,
    /// What `ProfileService` reads: a read replica's, or the primary's.
    pub profile_reads: ProfileReader,
}

/// Serves every gRPC service on `listener` until `shutdown` completes; then
/// waits for in-flight calls to finish. Open streams end when `stopping`
/// turns true.
pub async fn serve(
    listener: TcpListener,
    log: EventLog,
    tokens: Arc<TokenRegistry>,
    ingest: Arc<Ingest>,
    readers: Readers,
    stopping: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let profiles = readers.profiles.clone();
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AdminServiceServer<AdminApi>>().await;
    health.set_serving::<AudienceServiceServer<AudiencesApi>>().await;
    health.set_serving::<AuditServiceServer<AuditApi>>().await;
    health.set_serving::<IngestServiceServer<IngestApi>>().await;
    health.set_serving::<ImportServiceServer<ImportApi>>().await;
    health.set_serving::<ProfileServiceServer<ProfilesApi>>().await;
    let reflection = reflection_of("grpc.reflection.v1.ServerReflection").build_v1()?;
    let reflection_alpha = reflection_of("grpc.reflection.v1alpha.ServerReflection").build_v1alpha()?;
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(AdminServiceServer::new(AdminApi::new(
            log.clone(),
            ingest.directory().clone(),
            tokens.clone(),
            profiles.clone(),
        )))
        .add_service(AudienceServiceServer::new(AudiencesApi::new(
            Audiences::new(log.clone(), profiles.clone()),
            tokens.clone(),
        )))
        .add_service(AuditServiceServer::new(
            AuditApi::new(log, tokens.clone(), stopping).with_profiles(profiles.store()),
        ))
        .add_service(ProfileServiceServer::new(ProfilesApi::new(readers.profile_reads, tokens)))
        .add_service(
            IngestServiceServer::new(IngestApi::new(ingest.clone())).max_decoding_message_size(64 * 1024 * 1024),
        )
        .add_service(ImportServiceServer::new(ImportApi::new(ingest)))
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await?;
    Ok(())
}

/// The connections `listener` accepts, for a tonic server, with
/// `TCP_NODELAY` on: a response or a large request written in pieces would
/// otherwise wait for the peer's delayed acknowledgement (about 40 ms a
/// call on Linux), which bounds a destination adapter to a few batches a
/// second.
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn accepted_connections_send_without_waiting_for_acknowledgements() {
        let bound = super::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = bound.local_addr().unwrap();
        let mut incoming = super::incoming(bound);
        let _client = tokio::net::TcpStream::connect(address).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap(), "TCP_NODELAY is off on an accepted gRPC connection");
    }
}
