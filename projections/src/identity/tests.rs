//! Given events, then profiles: the identity graph's behaviour, and a
//! property test of its determinism.

use onepd_domain::identity::CustomKind;
use onepd_domain::{Payload, StreamId, Timestamp};
use proptest::prelude::*;
use serde_json::json;
use uuid::Uuid;

use super::*;

const WORKSPACE: WorkspaceId = WorkspaceId(Uuid::from_u128(0xac1e));

fn event_id(position: u64) -> EventId {
    EventId(Uuid::from_u128(0xe0000 + u128::from(position)))
}

/// The `position`th accepted message of the default workspace.
fn accepted(position: u64, message: Value) -> RecordedEvent {
    accepted_with(position, message, json!([]))
}

fn accepted_with(position: u64, message: Value, violations: Value) -> RecordedEvent {
    RecordedEvent {
        position: Position(position),
        event_id: event_id(position),
        workspace_id: WORKSPACE,
        stream_id: StreamId::new("source-s1").unwrap(),
        stream_version: position,
        event_type: MessageAccepted::TYPE.into(),
        schema_version: 1,
        data: Payload::Data(json!({"message": message, "violations": violations})),
        metadata: json!({"source_id": "s1"}),
        sealed: true,
        recorded_at: Timestamp(0),
        hash: [0; 32],
    }
}

/// Folds `messages` at positions 1, 2, 3, … under `rules`.
fn given(rules: IdentityRules, messages: impl IntoIterator<Item = Value>) -> IdentityGraph {
    let mut graph = IdentityGraph::new(rules);
    for (index, message) in messages.into_iter().enumerate() {
        graph.apply(&accepted(index as u64 + 1, message));
    }
    graph
}

fn id(text: &str) -> Identifier {
    let (kind, value) = text.split_once(':').unwrap();
    Identifier::new(IdentifierKind::from_name(kind), value)
}

fn ws(graph: &IdentityGraph) -> &WorkspaceIdentities {
    graph.workspace(WORKSPACE).expect("the workspace has seen events")
}

/// Every profile's identifiers as `kind:value`, profiles oldest first.
fn profiles(graph: &IdentityGraph) -> Vec<Vec<String>> {
    let ws = ws(graph);
    ws.profiles().into_iter().map(|profile| ws.identifiers(profile).iter().map(ToString::to_string).collect()).collect()
}

fn created_by(position: u64) -> ProfileId {
    ProfileId::created_by(WORKSPACE, event_id(position))
}

fn identify(user: &str, anonymous: &str, email: &str) -> Value {
    json!({"type": "identify", "userId": user, "anonymousId": anonymous, "traits": {"email": email}})
}

fn page(anonymous: &str) -> Value {
    json!({"type": "page", "anonymousId": anonymous})
}

#[test]
fn anonymous_browsing_then_login_merges_into_one_profile() {
    let graph = given(
        IdentityRules::default(),
        [
            json!({"type": "identify", "userId": "u1", "anonymousId": "laptop"}),
            page("phone-browser"),
            page("phone-browser"),
            json!({"type": "track", "event": "Logged In", "userId": "u1", "anonymousId": "phone-browser"}),
        ],
    );
    assert_eq!(profiles(&graph), [vec!["user_id:u1", "anonymous_id:laptop", "anonymous_id:phone-browser"]]);
    let ws = ws(&graph);
    let profile = ws.profile_of(&id("anonymous_id:phone-browser")).unwrap();
    assert_eq!(profile, created_by(1));
    assert_eq!(
        ws.merges(profile),
        [Merge {
            survivor: created_by(1),
            absorbed: created_by(2),
            position: Position(4),
            event_id: event_id(4),
            source_id: Some("s1".into()),
            shared: id("user_id:u1"),
            rule: "shared user_id".into(),
        }]
    );
    assert_eq!(ws.resolve(created_by(2)), Some(created_by(1)));
}

#[test]
fn anonymous_browsing_then_a_first_login_keeps_the_anonymous_profile() {
    let graph = given(IdentityRules::default(), [page("a1"), page("a1"), identify("u1", "a1", "ann@example.com")]);
    assert_eq!(profiles(&graph), [vec!["user_id:u1", "anonymous_id:a1", "email:ann@example.com"]]);
    assert_eq!(ws(&graph).profile_of(&id("user_id:u1")), Some(created_by(1)));
    assert!(ws(&graph).merges(created_by(1)).is_empty());
}

#[test]
fn two_users_sharing_a_blocked_email_stay_apart() {
    let graph =
        given(IdentityRules::default(), [identify("u1", "a1", "test@test.com"), identify("u2", "a2", "TEST@test.com")]);
    assert_eq!(profiles(&graph), [vec!["user_id:u1", "anonymous_id:a1"], vec!["user_id:u2", "anonymous_id:a2"]]);
    assert_eq!(ws(&graph).profile_of(&id("email:test@test.com")), None);
}

#[test]
fn two_users_sharing_an_email_matching_a_blocked_pattern_stay_apart() {
    let rules = IdentityRules {
        blocked_patterns: vec!["*@example.com".into()],
        limits: BTreeMap::from([(IdentifierKind::UserId, 2)]),
        ..Default::default()
    };
    let graph = given(rules, [identify("u1", "a1", "qa@example.com"), identify("u2", "a2", "qa@example.com")]);
    assert_eq!(profiles(&graph).len(), 2);
}

#[test]
fn a_user_id_limit_of_one_stops_a_merge_and_the_email_stays_with_the_older_profile() {
    let graph = given(
        IdentityRules::default(),
        [identify("u1", "a1", "shared@family.com"), identify("u2", "a2", "shared@family.com")],
    );
    assert_eq!(
        profiles(&graph),
        [vec!["user_id:u1", "anonymous_id:a1", "email:shared@family.com"], vec!["user_id:u2", "anonymous_id:a2"],]
    );
    let ws = ws(&graph);
    assert_eq!(ws.profile_of(&id("email:shared@family.com")), Some(created_by(1)));
    assert_eq!(ws.profile_of(&id("user_id:u2")), Some(created_by(2)));
    assert!(ws.merges(created_by(1)).is_empty());
    // The second profile says what it was denied, and why.
    let held = ws.held_back(created_by(2));
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].identifier, id("email:shared@family.com"));
    assert_eq!((held[0].position, held[0].held_by), (Position(2), Some(created_by(1))));
    assert_eq!((&held[0].limit_kind, held[0].limit), (&IdentifierKind::UserId, 1));
    assert_eq!(held[0].reason, "user_id limit 1: joining email would give the profile 2");
    assert!(ws.held_back(created_by(1)).is_empty());
}

#[test]
fn a_higher_user_id_limit_lets_the_shared_email_merge() {
    let rules = IdentityRules::default().with_limit(IdentifierKind::UserId, 2);
    let graph = given(rules, [identify("u1", "a1", "shared@family.com"), identify("u2", "a2", "shared@family.com")]);
    assert_eq!(profiles(&graph).len(), 1);
    let merges = ws(&graph).merges(created_by(1));
    assert_eq!(merges.len(), 0, "the second event only adds new identifiers to the first profile");
}

#[test]
fn the_rest_of_an_events_identifiers_still_link_when_one_is_left_out() {
    // u2 logs in on u1's device: the device's anonymous id is left out (it is
    // the lowest-priority conflicting identifier), u2 and the new email link.
    let graph = given(
        IdentityRules::default(),
        [
            json!({"type": "identify", "userId": "u1", "anonymousId": "shared-device"}),
            identify("u2", "shared-device", "bob@example.org"),
        ],
    );
    assert_eq!(
        profiles(&graph),
        [vec!["user_id:u1", "anonymous_id:shared-device"], vec!["user_id:u2", "email:bob@example.org"]]
    );
}

#[test]
fn a_limit_on_a_lower_kind_leaves_out_only_the_identifier_of_that_kind() {
    let rules = IdentityRules::default().with_limit(IdentifierKind::AnonymousId, 1);
    let graph = given(
        rules,
        [json!({"type": "identify", "userId": "u1", "anonymousId": "a1"}), page("a2"), page("a2"), {
            json!({"type": "track", "userId": "u1", "anonymousId": "a2", "traits": {"email": "ann@example.org"}})
        }],
    );
    assert_eq!(
        profiles(&graph),
        [vec!["user_id:u1", "anonymous_id:a1", "email:ann@example.org"], vec!["anonymous_id:a2"]]
    );
}

#[test]
fn alias_joins_previous_id_and_user_id() {
    let graph = given(
        IdentityRules::default(),
        [
            page("visitor-9"),
            json!({"type": "identify", "userId": "u1", "traits": {"email": "ann@example.com"}}),
            json!({"type": "alias", "previousId": "visitor-9", "userId": "u1"}),
        ],
    );
    assert_eq!(profiles(&graph), [vec!["user_id:u1", "anonymous_id:visitor-9", "email:ann@example.com"]]);
    let merges = ws(&graph).merges(created_by(1));
    assert_eq!(merges.len(), 1);
    assert_eq!((merges[0].rule.as_str(), &merges[0].shared), ("alias", &id("user_id:u1")));
    assert_eq!((merges[0].survivor, merges[0].absorbed), (created_by(1), created_by(2)));
}

#[test]
fn alias_of_a_known_user_id_links_two_user_ids_only_when_the_limit_allows() {
    let events = [
        json!({"type": "identify", "userId": "old-id"}),
        json!({"type": "identify", "userId": "new-id"}),
        json!({"type": "alias", "previousId": "old-id", "userId": "new-id"}),
    ];
    let strict = given(IdentityRules::default(), events.clone());
    assert_eq!(profiles(&strict), [vec!["user_id:old-id"], vec!["user_id:new-id"]]);
    let loose = given(IdentityRules::default().with_limit(IdentifierKind::UserId, 2), events);
    assert_eq!(profiles(&loose), [vec!["user_id:new-id", "user_id:old-id"]]);
    assert_eq!(ws(&loose).merges(created_by(1))[0].rule, "alias");
}

#[test]
fn explain_names_the_exact_event_of_each_link() {
    let graph = given(
        IdentityRules::default(),
        [
            page("a1"),
            json!({"type": "track", "anonymousId": "a1", "context": {"traits": {"email": "ann@example.com"}}}),
            page("a2"),
            json!({"type": "identify", "userId": "u1", "traits": {"email": "ann@example.com"}}),
            json!({"type": "identify", "userId": "u1", "anonymousId": "a2"}),
        ],
    );
    let ws = ws(&graph);
    let link = |from: &str, to: &str, position: u64, rule: &str| Link {
        from: id(from),
        to: id(to),
        position: Position(position),
        event_id: event_id(position),
        source_id: Some("s1".into()),
        rule: rule.into(),
    };
    assert_eq!(
        ws.explain(&id("anonymous_id:a1"), &id("anonymous_id:a2")),
        Some(vec![
            link("anonymous_id:a1", "email:ann@example.com", 2, "seen together"),
            link("email:ann@example.com", "user_id:u1", 4, "seen together"),
            link("user_id:u1", "anonymous_id:a2", 5, "shared user_id"),
        ])
    );
    assert_eq!(
        ws.explain(&id("user_id:u1"), &id("anonymous_id:a1")),
        Some(vec![
            link("email:ann@example.com", "user_id:u1", 4, "seen together"),
            link("anonymous_id:a1", "email:ann@example.com", 2, "seen together")
        ])
    );
    assert_eq!(ws.explain(&id("user_id:u1"), &id("user_id:u1")), Some(vec![]));
    assert_eq!(ws.merges(created_by(1))[0].event_id, event_id(5));
}

#[test]
fn explain_finds_nothing_between_two_profiles() {
    let graph = given(IdentityRules::default(), [page("a1"), page("a2")]);
    assert_eq!(ws(&graph).explain(&id("anonymous_id:a1"), &id("anonymous_id:a2")), None);
    assert_eq!(ws(&graph).explain(&id("anonymous_id:a1"), &id("anonymous_id:nobody")), None);
}

#[test]
fn the_oldest_profile_survives() {
    let graph = given(
        IdentityRules::default(),
        [
            page("a1"),
            json!({"type": "track", "anonymousId": "a2", "context": {"traits": {"phone": "+4915112345678"}}}),
            json!({"type": "track", "anonymousId": "a3", "context": {"traits": {"phone": "+4915112345678", "email": "x@y.de"}}}),
            json!({"type": "identify", "anonymousId": "a3", "userId": "u1"}),
            json!({"type": "identify", "anonymousId": "a1", "traits": {"email": "x@y.de"}}),
        ],
    );
    let ws = ws(&graph);
    // Profile 1 (one identifier) absorbs profile 2 (five identifiers).
    assert_eq!(ws.profiles(), [created_by(1)]);
    assert_eq!(ws.identifiers(created_by(1)).len(), 6);
    assert_eq!(ws.profile_of(&id("user_id:u1")), Some(created_by(1)));
    assert_eq!(ws.resolve(created_by(2)), Some(created_by(1)));
    let merges = ws.merges(created_by(2));
    assert_eq!(merges.len(), 1);
    assert_eq!(
        (merges[0].survivor, merges[0].absorbed, merges[0].position),
        (created_by(1), created_by(2), Position(5))
    );
    assert_eq!((merges[0].shared.clone(), merges[0].rule.as_str()), (id("email:x@y.de"), "shared email"));
}

#[test]
fn one_event_joining_three_profiles_records_two_merges_oldest_absorbed_first() {
    let graph = given(
        IdentityRules::default(),
        [page("a1"), page("a2"), page("a3"), json!({"type": "identify", "anonymousId": "a3", "userId": "u1"})],
    );
    let mut graph = graph;
    graph.apply(&accepted(5, json!({"type": "page", "anonymousId": "a1", "traits": {"email": "e@f.gh"}})));
    graph.apply(&accepted(6, json!({"type": "page", "anonymousId": "a2", "context": {"traits": {"email": "e@f.gh"}}})));
    graph.apply(&accepted(7, json!({"type": "track", "userId": "u1", "anonymousId": "a2"})));
    let ws = ws(&graph);
    assert_eq!(ws.profiles(), [created_by(1)]);
    let merges: Vec<(ProfileId, u64, String)> = ws
        .merges(created_by(1))
        .iter()
        .map(|merge| (merge.absorbed, merge.position.0, merge.shared.to_string()))
        .collect();
    assert_eq!(merges, [(created_by(2), 6, "email:e@f.gh".to_owned()), (created_by(3), 7, "user_id:u1".to_owned())]);

    let mut at_once = given(IdentityRules::default(), [page("a1"), page("a2"), page("a3")]);
    at_once.apply(&accepted(
        4,
        json!({"type": "page", "anonymousId": "a3", "context": {"traits": {"email": "e@f.gh"}},
        "traits": {"email": "e@f.gh"}, "userId": "u9"}),
    ));
    at_once.apply(&accepted(5, json!({"type": "identify", "anonymousId": "a3", "userId": "u9"})));
    at_once.apply(&accepted(6, json!({"type": "alias", "anonymousId": "a2", "previousId": "a1", "userId": "u9"})));
    let merges: Vec<(ProfileId, ProfileId)> = at_once
        .workspace(WORKSPACE)
        .unwrap()
        .merges(created_by(1))
        .iter()
        .map(|merge| (merge.survivor, merge.absorbed))
        .collect();
    assert_eq!(merges, [(created_by(1), created_by(2)), (created_by(1), created_by(3))]);
}

#[test]
fn an_invalid_email_flagged_at_ingest_links_nobody() {
    let mut graph = IdentityGraph::default();
    let flagged =
        json!([{"field": "traits.email", "rule": "email", "message": "traits.email: expected an email address"}]);
    graph.apply(&accepted_with(1, identify("u1", "a1", "n/a"), flagged.clone()));
    graph.apply(&accepted_with(2, identify("u2", "a2", "n/a"), flagged));
    assert_eq!(profiles(&graph).len(), 2);
    assert_eq!(ws(&graph).profile_of(&id("email:n/a")), None);
}

#[test]
fn group_calls_and_erased_payloads_link_nobody() {
    let mut graph = given(
        IdentityRules::default(),
        [json!({"type": "group", "userId": "u1", "anonymousId": "a1", "groupId": "g"})],
    );
    let mut erased = accepted(2, identify("u1", "a1", "ann@example.com"));
    erased.data = Payload::Erased;
    graph.apply(&erased);
    assert!(ws(&graph).profiles().is_empty());
}

#[test]
fn declared_custom_kinds_link_profiles() {
    let rules = IdentityRules::default()
        .with_custom(CustomKind { name: "crm_id".into(), from: onepd_domain::identity::CustomSource::ExternalId });
    let with_crm = |anonymous: &str| json!({"type": "page", "anonymousId": anonymous, "context": {"externalIds": [{"id": "C-7", "type": "crm_id"}]}});
    let graph = given(rules, [with_crm("a1"), with_crm("a2")]);
    assert_eq!(profiles(&graph), [vec!["anonymous_id:a1", "anonymous_id:a2", "crm_id:C-7"]]);
}

#[test]
fn workspaces_are_separate_graphs_with_their_own_rules() {
    let other = WorkspaceId(Uuid::from_u128(7));
    let mut graph =
        IdentityGraph::default().with_rules(other, IdentityRules::default().with_limit(IdentifierKind::UserId, 2));
    for (position, message) in [identify("u1", "a1", "e@f.gh"), identify("u2", "a2", "e@f.gh")].into_iter().enumerate()
    {
        let event = accepted(position as u64 + 1, message);
        graph.apply(&event);
        graph.apply(&RecordedEvent { workspace_id: other, position: Position(event.position.0 + 10), ..event });
    }
    assert_eq!(profiles(&graph).len(), 2);
    let other = graph.workspace(other).unwrap();
    assert_eq!(other.profiles(), [ProfileId::created_by(WorkspaceId(Uuid::from_u128(7)), event_id(1))]);
}

// ---- property test ----------------------------------------------------------

/// Everything a query can see, in a deterministic order.
type Snapshot = Vec<(ProfileId, Vec<Identifier>, Vec<Merge>)>;

fn snapshot(graph: &IdentityGraph) -> Snapshot {
    let Some(ws) = graph.workspace(WORKSPACE) else { return Vec::new() };
    ws.profiles().into_iter().map(|profile| (profile, ws.identifiers(profile), ws.merges(profile).to_vec())).collect()
}

fn message_strategy() -> impl Strategy<Value = Value> {
    let user = prop::option::of(prop::sample::select(vec!["u1", "u2", "u3", "null"]));
    let anonymous = prop::option::of(prop::sample::select(vec!["a1", "a2", "a3", "a4", "a5", "0000"]));
    let email = prop::option::of(prop::sample::select(vec!["e1@x.co", "e2@x.co", "test@test.com", "q@blocked.io"]));
    let phone = prop::option::of(prop::sample::select(vec!["+100", "+200"]));
    let kind = prop::sample::select(vec!["identify", "track", "page", "alias", "group"]);
    let previous = prop::sample::select(vec!["a1", "a2", "u1", "u2", "undefined"]);
    (kind, user, anonymous, email, phone, previous).prop_map(|(kind, user, anonymous, email, phone, previous)| {
        let mut message = json!({"type": kind, "traits": {}, "context": {"traits": {}}});
        if let Some(user) = user {
            message["userId"] = json!(user);
        }
        if let Some(anonymous) = anonymous {
            message["anonymousId"] = json!(anonymous);
        }
        if let Some(email) = email {
            message["traits"]["email"] = json!(email);
        }
        if let Some(phone) = phone {
            message["context"]["traits"]["phone"] = json!(phone);
        }
        if kind == "alias" {
            message["previousId"] = json!(previous);
        }
        message
    })
}

fn rules_strategy() -> impl Strategy<Value = IdentityRules> {
    (1usize..=2, 1usize..=3, 1usize..=2).prop_map(|(users, anonymous, emails)| IdentityRules {
        blocked_patterns: vec!["*@blocked.io".into()],
        ..IdentityRules::default()
            .with_limit(IdentifierKind::UserId, users)
            .with_limit(IdentifierKind::AnonymousId, anonymous)
            .with_limit(IdentifierKind::Email, emails)
    })
}

proptest! {
    #[test]
    fn folding_is_deterministic_and_independent_of_batch_size(
        rules in rules_strategy(),
        messages in prop::collection::vec(message_strategy(), 0..40),
        batch in 1usize..8,
    ) {
        let events: Vec<RecordedEvent> =
            messages.into_iter().enumerate().map(|(index, message)| accepted(index as u64 + 1, message)).collect();
        let mut once = IdentityGraph::new(rules.clone());
        events.iter().for_each(|event| once.apply(event));
        let mut again = IdentityGraph::new(rules.clone());
        events.iter().for_each(|event| again.apply(event));
        prop_assert_eq!(snapshot(&once), snapshot(&again));
        let mut batched = IdentityGraph::new(rules.clone());
        for chunk in events.chunks(batch) {
            batched.apply_all(chunk);
        }
        prop_assert_eq!(snapshot(&once), snapshot(&batched));

        // Whatever the sequence, the rules hold on every profile.
        if let Some(ws) = once.workspace(WORKSPACE) {
            for profile in ws.profiles() {
                let identifiers = ws.identifiers(profile);
                for identifier in &identifiers {
                    prop_assert!(!rules.is_blocked(identifier), "{} is blocked", identifier);
                    let of_kind = identifiers.iter().filter(|other| other.kind == identifier.kind).count();
                    prop_assert!(of_kind <= rules.limit(&identifier.kind), "{} over its limit", identifier);
                    prop_assert_eq!(ws.profile_of(identifier), Some(profile));
                    let path = ws.explain(&identifiers[0], identifier).expect("one profile is connected");
                    prop_assert!(path.iter().all(|link| link.position.0 >= 1));
                }
                for merge in ws.merges(profile) {
                    prop_assert_eq!(ws.resolve(merge.survivor), Some(profile));
                    prop_assert_eq!(ws.resolve(merge.absorbed), Some(profile));
                }
            }
        }
    }
}
