//! The mappings onepd ships, one JSON file per platform topic in `mappings/`.
//!
//! | platform | topics                                              | file                                   |
//! |----------|-----------------------------------------------------|----------------------------------------|
//! | Shopify  | `orders/create`                                     | `shopify_orders_create.json`           |
//! | Shopify  | `customers/create`                                  | `shopify_customers_create.json`        |
//! | Stripe   | `checkout.session.completed`                        | `stripe_checkout_session_completed.json` |
//! | Stripe   | `customer.created`                                  | `stripe_customer_created.json`         |
//! | HubSpot  | `contact`, `contact.creation`, `contact.propertyChange` | `hubspot_contact.json`             |
//! | Generic  | `example`                                           | `generic_example.json`                 |
//!
//! The generic example is documentation: a starting point users copy and
//! edit, not something to attach to a source as-is.
//!
//! **Invariant:** every shipped mapping parses (tested), so [`shipped`] never
//! fails for a listed topic.

use super::{Mapping, Platform};

/// One shipped mapping: the platform, the topics it serves and its JSON.
#[derive(Debug, Clone, Copy)]
pub struct ShippedMapping {
    /// The platform that sends these payloads.
    pub platform: Platform,
    /// The platform's names for the topics (Shopify's `X-Shopify-Topic`,
    /// Stripe's event `type`, HubSpot's `subscriptionType`).
    pub topics: &'static [&'static str],
    /// The mapping, in the format [`Mapping::parse`] reads.
    pub json: &'static str,
}

/// Every shipped mapping.
pub const SHIPPED: &[ShippedMapping] = &[
    ShippedMapping {
        platform: Platform::Shopify,
        topics: &["orders/create"],
        json: include_str!("mappings/shopify_orders_create.json"),
    },
    ShippedMapping {
        platform: Platform::Shopify,
        topics: &["customers/create"],
        json: include_str!("mappings/shopify_customers_create.json"),
    },
    ShippedMapping {
        platform: Platform::Stripe,
        topics: &["checkout.session.completed"],
        json: include_str!("mappings/stripe_checkout_session_completed.json"),
    },
    ShippedMapping {
        platform: Platform::Stripe,
        topics: &["customer.created"],
        json: include_str!("mappings/stripe_customer_created.json"),
    },
    ShippedMapping {
        platform: Platform::HubSpot,
        topics: &["contact", "contact.creation", "contact.propertyChange"],
        json: include_str!("mappings/hubspot_contact.json"),
    },
    ShippedMapping {
        platform: Platform::Generic,
        topics: &["example"],
        json: include_str!("mappings/generic_example.json"),
    },
];

/// The shipped mapping for `platform`'s `topic`, parsed, if onepd ships one.
pub fn shipped(platform: Platform, topic: &str) -> Option<Mapping> {
    let entry = SHIPPED.iter().find(|entry| entry.platform == platform && entry.topics.contains(&topic))?;
    let value: serde_json::Value = serde_json::from_str(entry.json).expect("shipped mappings are valid JSON (tested)");
    Some(Mapping::parse(&value).expect("shipped mappings parse (tested)"))
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use hmac::{Hmac, Mac};
    use serde_json::{Value, json};
    use sha2::Sha256;

    use super::*;
    use crate::webhook::{GenericHmac, Request, VerifyConfig, VerifyError, verify};

    const NOW: i64 = 1_710_274_200;
    const SECRET: &str = "whsec_shipped_test";

    fn fixture(name: &str) -> &'static str {
        match name {
            "shopify_orders_create" => include_str!("../../tests/fixtures/webhooks/shopify_orders_create.json"),
            "shopify_customers_create" => include_str!("../../tests/fixtures/webhooks/shopify_customers_create.json"),
            "stripe_checkout_session_completed" => {
                include_str!("../../tests/fixtures/webhooks/stripe_checkout_session_completed.json")
            }
            "stripe_customer_created" => include_str!("../../tests/fixtures/webhooks/stripe_customer_created.json"),
            "hubspot_contact" => include_str!("../../tests/fixtures/webhooks/hubspot_contact.json"),
            "generic_example" => include_str!("../../tests/fixtures/webhooks/generic_example.json"),
            other => panic!("no fixture {other}"),
        }
    }

    fn hmac(parts: &[&[u8]]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }

    const URI: &str = "https://cdp.example.com/v1/webhooks/src_1";

    /// The headers the platform would send with `body`, signed with [`SECRET`].
    fn signed_headers(platform: Platform, body: &[u8]) -> Vec<(String, String)> {
        let pairs: Vec<(&str, String)> = match platform {
            Platform::Shopify => vec![
                ("X-Shopify-Hmac-Sha256", BASE64.encode(hmac(&[body]))),
                ("X-Shopify-Webhook-Id", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043".to_owned()),
            ],
            Platform::Stripe => {
                let t = (NOW - 30).to_string();
                vec![("Stripe-Signature", format!("t={t},v1={}", hex::encode(hmac(&[t.as_bytes(), b".", body]))))]
            }
            Platform::HubSpot => {
                let t = (NOW * 1000 - 1500).to_string();
                vec![
                    ("X-HubSpot-Signature-v3", BASE64.encode(hmac(&[b"POST", URI.as_bytes(), body, t.as_bytes()]))),
                    ("X-HubSpot-Request-Timestamp", t),
                ]
            }
            Platform::Generic => vec![
                ("X-Acme-Signature", format!("sha256={}", hex::encode(hmac(&[body])))),
                ("X-Acme-Delivery", "dlv_01".to_owned()),
            ],
        };
        pairs.into_iter().map(|(name, value)| (name.to_owned(), value)).collect()
    }

    fn config() -> VerifyConfig {
        VerifyConfig {
            generic: Some(GenericHmac {
                header: "X-Acme-Signature".to_owned(),
                algorithm: Default::default(),
                encoding: Default::default(),
                prefix: Some("sha256=".to_owned()),
            }),
            ..VerifyConfig::new(SECRET)
        }
    }

    /// Verifies and maps a signed fixture, as the webhook handler will, twice,
    /// and checks both runs give the same messages.
    fn receive(platform: Platform, topic: &str, name: &str) -> Vec<Value> {
        let body = fixture(name).as_bytes();
        let headers = signed_headers(platform, body);
        let request = Request { method: "POST", uri: URI, headers: &headers, body };
        verify(platform, &config(), &request, NOW).unwrap();
        let payload: Value = serde_json::from_slice(body).unwrap();
        let mapping = shipped(platform, topic).unwrap();
        let first = mapping.apply(&request, &payload).unwrap();
        let retry = shipped(platform, topic).unwrap().apply(&request, &payload).unwrap();
        assert_eq!(first, retry, "a retry maps to the same messages and ids");
        first
    }

    /// The same fixture with one byte changed after signing fails verification.
    fn tampered_fails(platform: Platform, name: &str) -> VerifyError {
        let body = fixture(name).as_bytes();
        let headers = signed_headers(platform, body);
        let mut tampered = body.to_vec();
        let brace = tampered.iter().rposition(|byte| *byte == b'}').unwrap();
        tampered.insert(brace, b' ');
        let request = Request { method: "POST", uri: URI, headers: &headers, body: &tampered };
        verify(platform, &config(), &request, NOW).unwrap_err()
    }

    #[test]
    fn every_shipped_mapping_parses() {
        for entry in SHIPPED {
            let value: Value = serde_json::from_str(entry.json).unwrap();
            Mapping::parse(&value).unwrap_or_else(|error| panic!("{:?} {:?}: {error}", entry.platform, entry.topics));
        }
    }

    #[test]
    fn an_unknown_topic_has_no_shipped_mapping() {
        assert!(shipped(Platform::Shopify, "orders/delete").is_none());
        assert!(shipped(Platform::Stripe, "orders/create").is_none());
    }

    #[test]
    fn a_shopify_order_identifies_the_customer_and_tracks_order_completed() {
        let messages = receive(Platform::Shopify, "orders/create", "shopify_orders_create");
        assert_eq!(
            messages,
            vec![
                json!({
                    "type": "identify",
                    "messageId": "shopify:b54557e4-bdd9-4b37-8a5f-bf7d70bcd043:0",
                    "userId": "shopify:115310627314723954",
                    "timestamp": "2024-03-12T16:09:28-04:00",
                    "traits": {
                        "email": "jon@example.com",
                        "phone": "+15555550123",
                        "firstName": "Jon",
                        "lastName": "Doe",
                        "name": "Jon Doe"
                    }
                }),
                json!({
                    "type": "track",
                    "messageId": "shopify:b54557e4-bdd9-4b37-8a5f-bf7d70bcd043:1",
                    "event": "Order Completed",
                    "userId": "shopify:115310627314723954",
                    "anonymousId": "shopify_checkout:bd5a8aa1ecd019dd3520ff791ee3a24c",
                    "timestamp": "2024-03-12T16:09:28-04:00",
                    "properties": {
                        "order_id": "820982911946154508",
                        "order_number": 1001,
                        "total": 403.0,
                        "revenue": 398.0,
                        "tax": 5.0,
                        "discount": 0.0,
                        "currency": "USD",
                        "products": [
                            {
                                "product_id": "632910392",
                                "variant": "Pink",
                                "sku": "IPOD2008PINK",
                                "name": "IPod Nano - 8GB",
                                "price": 199.0,
                                "quantity": 1,
                                "brand": "Apple"
                            },
                            {
                                "product_id": "632910393",
                                "name": "Protective case",
                                "price": 99.5,
                                "quantity": 2,
                                "brand": "Acme"
                            }
                        ]
                    },
                    "context": {
                        "ip": "203.0.113.7",
                        "traits": {"email": "jon@example.com", "phone": "+15555550123"}
                    }
                }),
            ]
        );
    }

    #[test]
    fn a_shopify_guest_order_tracks_without_an_identify() {
        let mut payload: Value = serde_json::from_str(fixture("shopify_orders_create")).unwrap();
        payload.as_object_mut().unwrap().remove("customer");
        let headers = signed_headers(Platform::Shopify, b"{}");
        let request = Request { method: "POST", uri: URI, headers: &headers, body: b"{}" };
        let messages = shipped(Platform::Shopify, "orders/create").unwrap().apply(&request, &payload).unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0]["type"], "track");
        assert_eq!(messages[0]["messageId"], "shopify:b54557e4-bdd9-4b37-8a5f-bf7d70bcd043:1");
        assert!(messages[0].get("userId").is_none());
    }

    #[test]
    fn a_tampered_shopify_order_fails_verification() {
        assert!(matches!(
            tampered_fails(Platform::Shopify, "shopify_orders_create"),
            VerifyError::SignatureMismatch { .. }
        ));
    }

    #[test]
    fn a_shopify_customer_creation_identifies_the_customer() {
        let messages = receive(Platform::Shopify, "customers/create", "shopify_customers_create");
        assert_eq!(
            messages,
            vec![json!({
                "type": "identify",
                "messageId": "shopify:b54557e4-bdd9-4b37-8a5f-bf7d70bcd043:0",
                "userId": "shopify:706405506930370084",
                "timestamp": "2024-03-12T16:09:28-04:00",
                "traits": {
                    "email": "bob@biller.com",
                    "firstName": "Bob",
                    "lastName": "Biller",
                    "name": "Bob Biller",
                    "createdAt": "2024-03-12T16:09:28-04:00",
                    "emailMarketingConsent": "subscribed",
                    "address": {"city": "Ottawa", "country": "CA", "postalCode": "K2H7A8"}
                }
            })]
        );
        assert!(matches!(
            tampered_fails(Platform::Shopify, "shopify_customers_create"),
            VerifyError::SignatureMismatch { .. }
        ));
    }

    #[test]
    fn a_stripe_checkout_session_tracks_order_completed_in_major_units() {
        let messages = receive(Platform::Stripe, "checkout.session.completed", "stripe_checkout_session_completed");
        assert_eq!(
            messages,
            vec![json!({
                "type": "track",
                "messageId": "stripe:evt_1OqkNbLkdIwHu7ixC2Yz5fXm:0",
                "event": "Order Completed",
                "userId": "stripe:cus_PfZ3x9yQ1A2b3C",
                "anonymousId": "stripe_session:cs_test_a1b2c3d4e5f6",
                "timestamp": "2024-03-12T20:09:28Z",
                "properties": {
                    "order_id": "cs_test_a1b2c3d4e5f6",
                    "total": 21.99,
                    "revenue": 20.0,
                    "tax": 1.99,
                    "discount": 0.0,
                    "currency": "USD",
                    "payment_status": "paid"
                },
                "context": {"traits": {"email": "jenny.rosen@example.com", "name": "Jenny Rosen"}}
            })]
        );
        assert!(matches!(
            tampered_fails(Platform::Stripe, "stripe_checkout_session_completed"),
            VerifyError::SignatureMismatch { .. }
        ));
    }

    #[test]
    fn a_stripe_event_of_another_type_maps_to_nothing() {
        let payload = json!({"id": "evt_1", "type": "customer.created", "data": {"object": {"id": "cus_1"}}});
        let request = Request { method: "POST", uri: URI, headers: &[], body: b"{}" };
        let mapping = shipped(Platform::Stripe, "checkout.session.completed").unwrap();
        assert_eq!(mapping.apply(&request, &payload).unwrap(), Vec::<Value>::new());
    }

    #[test]
    fn a_stripe_customer_creation_identifies_the_customer() {
        let messages = receive(Platform::Stripe, "customer.created", "stripe_customer_created");
        assert_eq!(
            messages,
            vec![json!({
                "type": "identify",
                "messageId": "stripe:evt_1NG8Du2eZvKYlo2CUI79vXWy:0",
                "userId": "stripe:cus_NffrFeUfNV2Hib",
                "timestamp": "2023-06-06T22:19:30Z",
                "traits": {
                    "email": "jennyrosen@example.com",
                    "name": "Jenny Rosen",
                    "createdAt": "2023-06-06T22:19:30Z",
                    "address": {"city": "South San Francisco", "country": "US", "postalCode": "94080"}
                }
            })]
        );
        assert!(matches!(
            tampered_fails(Platform::Stripe, "stripe_customer_created"),
            VerifyError::SignatureMismatch { .. }
        ));
    }

    #[test]
    fn a_hubspot_batch_identifies_each_contact_event_and_skips_other_subscriptions() {
        let messages = receive(Platform::HubSpot, "contact", "hubspot_contact");
        assert_eq!(
            messages,
            vec![
                json!({
                    "type": "identify",
                    "messageId": "hubspot:1920573316:0",
                    "userId": "hubspot:123",
                    "timestamp": "2024-03-12T20:09:28.123Z",
                    "context": {"hubspot": {
                        "portal_id": 62515, "subscription_type": "contact.creation", "change_source": "CRM_UI"
                    }}
                }),
                json!({
                    "type": "identify",
                    "messageId": "hubspot:1920573317:0",
                    "userId": "hubspot:123",
                    "timestamp": "2024-03-12T20:09:29Z",
                    "traits": {"email": "sample@hubspot.com"},
                    "context": {"hubspot": {
                        "portal_id": 62515, "subscription_type": "contact.propertyChange", "change_source": "CRM_UI"
                    }}
                }),
            ]
        );
        assert!(matches!(tampered_fails(Platform::HubSpot, "hubspot_contact"), VerifyError::SignatureMismatch { .. }));
    }

    #[test]
    fn the_generic_example_identifies_a_signup() {
        let messages = receive(Platform::Generic, "example", "generic_example");
        assert_eq!(
            messages,
            vec![json!({
                "type": "identify",
                "messageId": "acme:dlv_01:0",
                "userId": "acme:77",
                "timestamp": "2024-03-12T20:09:28Z",
                "traits": {
                    "email": "ada@example.com",
                    "name": "Ada Lovelace",
                    "address": {"city": "London"},
                    "plan": "free"
                }
            })]
        );
        assert!(matches!(tampered_fails(Platform::Generic, "generic_example"), VerifyError::SignatureMismatch { .. }));
    }
}
