//! `onepd.audiences.v1.AudienceService`: a workspace's audiences and
//! computed traits defined, listed and removed, a condition or audience
//! evaluated for one person or previewed over every profile, and a person's
//! computed traits, through the [`Audiences`] service the CLI uses too.
//!
//! Listing, evaluating and previewing need the `read` scope; defining and
//! removing need `admin`. Every call acts on the token's workspace only.

use onepd_domain::Timestamp;
use onepd_domain::audience::Explanation;
use onepd_domain::events::audience::{AudienceDefined, ComputedTraitDefined};
use onepd_domain::events::workspace::TokenScope;
use onepd_projections::access::Grant;
use onepd_proto::audiences::v1 as proto;
use onepd_proto::audiences::v1::audience_service_server::AudienceService;
use onepd_proto::audiences::v1::{evaluate_audience_request, get_computed_traits_request, target};
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::field;

use super::admin::admin_status;
use super::auth::TokenRegistry;
use super::profiles::{ProfileRef, parse_profile_ref, timestamp, timestamp_message};
use crate::audiences::{Audiences, Target, parse_condition};

/// Profile ids a preview returns when the request does not say.
const DEFAULT_SAMPLE: usize = 10;
/// The most profile ids one preview returns.
const MAX_SAMPLE: usize = 1_000;

/// The audience service.
pub struct AudiencesApi {
    audiences: Audiences,
    tokens: Arc<TokenRegistry>,
}

impl AudiencesApi {
    /// The service over `audiences`, admitting the admin tokens in `tokens`.
    pub fn new(audiences: Audiences, tokens: Arc<TokenRegistry>) -> AudiencesApi {
        AudiencesApi { audiences, tokens }
    }

    fn grant<T>(&self, request: &Request<T>, needed: TokenScope) -> Result<Grant, Status> {
        let grant = self.tokens.authorize(request.metadata(), needed)?;
        tracing::Span::current().record("workspace", field::display(grant.workspace));
        Ok(grant)
    }
}

fn condition(text: &str) -> Result<onepd_domain::audience::Condition, Status> {
    parse_condition(text).map_err(Status::invalid_argument)
}

fn target_of(target: Option<proto::Target>) -> Result<Target, Status> {
    match target.and_then(|target| target.target) {
        Some(target::Target::Condition(text)) => Ok(Target::Condition(condition(&text)?)),
        Some(target::Target::Audience(name)) => Ok(Target::Saved(name)),
        None => Err(Status::invalid_argument("target: expected a condition or an audience, found neither")),
    }
}

fn at_of(at: Option<prost_types::Timestamp>) -> Result<Option<Timestamp>, Status> {
    at.map(|at| timestamp("at", at)).transpose()
}

fn now() -> Timestamp {
    crate::ingest::now()
}

fn explanation_message(explanation: Explanation) -> proto::Explanation {
    proto::Explanation {
        condition: explanation.condition,
        holds: explanation.holds,
        found: explanation.found,
        positions: explanation.positions.into_iter().map(|position| position.0).collect(),
        parts: explanation.parts.into_iter().map(explanation_message).collect(),
    }
}

fn no_profile() -> Status {
    Status::invalid_argument("profile: expected an identifier or a profile_id, found neither")
}

/// Who a change is recorded as made by: the token's public id.
fn actor(grant: &Grant) -> String {
    format!("onepd.audiences.v1 token {}", grant.token_id)
}

#[tonic::async_trait]
impl AudienceService for AudiencesApi {
    #[tracing::instrument(skip_all, name = "define_audience", fields(workspace = field::Empty))]
    async fn define_audience(
        &self,
        request: Request<proto::DefineAudienceRequest>,
    ) -> Result<Response<proto::DefineAudienceResponse>, Status> {
        let grant = self.grant(&request, TokenScope::Admin)?;
        let request = request.into_inner();
        let description = (!request.description.trim().is_empty()).then_some(request.description);
        let defined = AudienceDefined { name: request.name, condition: condition(&request.condition)?, description };
        let (position, replaced) =
            self.audiences.define(grant.workspace, defined, &actor(&grant)).await.map_err(admin_status)?;
        Ok(Response::new(proto::DefineAudienceResponse { position: position.0, replaced }))
    }

    #[tracing::instrument(skip_all, name = "list_audiences", fields(workspace = field::Empty))]
    async fn list_audiences(
        &self,
        request: Request<proto::ListAudiencesRequest>,
    ) -> Result<Response<proto::ListAudiencesResponse>, Status> {
        let grant = self.grant(&request, TokenScope::Read)?;
        let listed = self.audiences.list(grant.workspace).await.map_err(admin_status)?;
        let sizes = self.audiences.sizes(grant.workspace).await.map_err(admin_status)?;
        let audiences = (listed.into_values())
            .map(|defined| proto::Audience {
                size: sizes.get(&defined.name).copied().unwrap_or_default(),
                name: defined.name,
                condition: defined.condition.to_string(),
                condition_json: serde_json::to_string(&defined.condition).unwrap_or_default(),
                description: defined.description.unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(proto::ListAudiencesResponse { audiences }))
    }

    #[tracing::instrument(skip_all, name = "list_members", fields(workspace = field::Empty))]
    async fn list_members(
        &self,
        request: Request<proto::ListMembersRequest>,
    ) -> Result<Response<proto::ListMembersResponse>, Status> {
        let grant = self.grant(&request, TokenScope::Read)?;
        let request = request.into_inner();
        let as_of = request.as_of.map(|at| timestamp("as_of", at)).transpose()?;
        if !self.audiences.list(grant.workspace).await.map_err(admin_status)?.contains_key(&request.name) {
            return Err(Status::not_found(format!("audience {:?}: not defined in this workspace", request.name)));
        }
        let members = self.audiences.members(grant.workspace, &request.name, as_of).await.map_err(admin_status)?;
        let members = (members.into_iter())
            .map(|member| proto::Member {
                profile_id: member.profile.0.to_string(),
                since_position: member.since.0,
                entered_at: Some(timestamp_message(member.at)),
            })
            .collect();
        Ok(Response::new(proto::ListMembersResponse { members }))
    }

    #[tracing::instrument(skip_all, name = "remove_audience", fields(workspace = field::Empty))]
    async fn remove_audience(
        &self,
        request: Request<proto::RemoveAudienceRequest>,
    ) -> Result<Response<proto::RemoveAudienceResponse>, Status> {
        let grant = self.grant(&request, TokenScope::Admin)?;
        let name = request.into_inner().name;
        let position = self.audiences.remove(grant.workspace, &name, &actor(&grant)).await.map_err(admin_status)?;
        Ok(Response::new(proto::RemoveAudienceResponse { position: position.0 }))
    }

    #[tracing::instrument(skip_all, name = "evaluate_audience", fields(workspace = field::Empty))]
    async fn evaluate_audience(
        &self,
        request: Request<proto::EvaluateAudienceRequest>,
    ) -> Result<Response<proto::EvaluateAudienceResponse>, Status> {
        let grant = self.grant(&request, TokenScope::Read)?;
        let request = request.into_inner();
        let target = target_of(request.target)?;
        let named = match request.profile {
            Some(evaluate_audience_request::Profile::Identifier(identifier)) => ProfileRef::Identifier(identifier),
            Some(evaluate_audience_request::Profile::ProfileId(id)) => ProfileRef::ProfileId(id),
            None => {
                return Err(Status::invalid_argument("profile: expected an identifier or a profile_id, found neither"));
            }
        };
        let lookup = parse_profile_ref(named)?;
        let at = at_of(request.at)?;
        let now = at.unwrap_or_else(now);
        let Some(verdict) =
            self.audiences.evaluate(grant.workspace, &target, &lookup, at, now).await.map_err(admin_status)?
        else {
            return Err(Status::not_found(super::profiles::not_found_message(
                "profile",
                &lookup,
                at.map(crate::profiles::AsOf::Time),
            )));
        };
        Ok(Response::new(proto::EvaluateAudienceResponse {
            holds: verdict.holds,
            at: Some(timestamp_message(now)),
            changes_at: verdict.changes_at.map(timestamp_message),
            explanation: Some(explanation_message(verdict.explanation)),
        }))
    }

    #[tracing::instrument(skip_all, name = "define_computed_trait", fields(workspace = field::Empty))]
    async fn define_computed_trait(
        &self,
        request: Request<proto::DefineComputedTraitRequest>,
    ) -> Result<Response<proto::DefineComputedTraitResponse>, Status> {
        let grant = self.grant(&request, TokenScope::Admin)?;
        let request = request.into_inner();
        let definition = serde_json::from_str(&request.definition_json)
            .map_err(|err| Status::invalid_argument(format!("definition_json: not a valid definition: {err}")))?;
        let defined = ComputedTraitDefined { name: request.name, definition };
        let (position, replaced) = self
            .audiences
            .define_computed_trait(grant.workspace, defined, &actor(&grant))
            .await
            .map_err(admin_status)?;
        Ok(Response::new(proto::DefineComputedTraitResponse { position: position.0, replaced }))
    }

    #[tracing::instrument(skip_all, name = "list_computed_traits", fields(workspace = field::Empty))]
    async fn list_computed_traits(
        &self,
        request: Request<proto::ListComputedTraitsRequest>,
    ) -> Result<Response<proto::ListComputedTraitsResponse>, Status> {
        let grant = self.grant(&request, TokenScope::Read)?;
        let listed = self.audiences.computed_traits(grant.workspace).await.map_err(admin_status)?;
        let computed_traits = (listed.into_values())
            .map(|defined| proto::ComputedTrait {
                name: defined.name,
                definition_json: serde_json::to_string(&defined.definition).unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(proto::ListComputedTraitsResponse { computed_traits }))
    }

    #[tracing::instrument(skip_all, name = "remove_computed_trait", fields(workspace = field::Empty))]
    async fn remove_computed_trait(
        &self,
        request: Request<proto::RemoveComputedTraitRequest>,
    ) -> Result<Response<proto::RemoveComputedTraitResponse>, Status> {
        let grant = self.grant(&request, TokenScope::Admin)?;
        let name = request.into_inner().name;
        let position =
            self.audiences.remove_computed_trait(grant.workspace, &name, &actor(&grant)).await.map_err(admin_status)?;
        Ok(Response::new(proto::RemoveComputedTraitResponse { position: position.0 }))
    }

    #[tracing::instrument(skip_all, name = "get_computed_traits", fields(workspace = field::Empty))]
    async fn get_computed_traits(
        &self,
        request: Request<proto::GetComputedTraitsRequest>,
    ) -> Result<Response<proto::GetComputedTraitsResponse>, Status> {
        let grant = self.grant(&request, TokenScope::Read)?;
        let request = request.into_inner();
        let named = match request.profile {
            Some(get_computed_traits_request::Profile::Identifier(identifier)) => ProfileRef::Identifier(identifier),
            Some(get_computed_traits_request::Profile::ProfileId(id)) => ProfileRef::ProfileId(id),
            None => return Err(no_profile()),
        };
        let lookup = parse_profile_ref(named)?;
        let at = at_of(request.at)?;
        let now = at.unwrap_or_else(now);
        let Some(values) =
            self.audiences.computed_values(grant.workspace, &lookup, at, now).await.map_err(admin_status)?
        else {
            return Err(Status::not_found(super::profiles::not_found_message(
                "profile",
                &lookup,
                at.map(crate::profiles::AsOf::Time),
            )));
        };
        let values_json = values.into_iter().filter_map(|(name, value)| Some((name, value?.to_string()))).collect();
        Ok(Response::new(proto::GetComputedTraitsResponse { values_json, at: Some(timestamp_message(now)) }))
    }

    #[tracing::instrument(skip_all, name = "preview_audience", fields(workspace = field::Empty))]
    async fn preview_audience(
        &self,
        request: Request<proto::PreviewAudienceRequest>,
    ) -> Result<Response<proto::PreviewAudienceResponse>, Status> {
        let grant = self.grant(&request, TokenScope::Read)?;
        let request = request.into_inner();
        let target = target_of(request.target)?;
        let at = at_of(request.at)?;
        let now = at.unwrap_or_else(now);
        let sample = match request.sample {
            0 => DEFAULT_SAMPLE,
            n => (n as usize).min(MAX_SAMPLE),
        };
        let preview = self.audiences.preview(grant.workspace, &target, at, now, sample).await.map_err(admin_status)?;
        Ok(Response::new(proto::PreviewAudienceResponse {
            condition: preview.condition,
            size: preview.size,
            profiles: preview.profiles,
            sample: preview.sample.iter().map(ToString::to_string).collect(),
            at: Some(timestamp_message(now)),
        }))
    }
}
