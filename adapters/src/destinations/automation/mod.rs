//! The marketing automation built-ins: email, SMS and lifecycle tools that
//! receive people's events, profile traits and list membership in full
//! (category `marketing_automation`: the sensitive-data policy removes only
//! what the destination asks it to).
//!
//! - [`klaviyo`]: Klaviyo events, profiles and list subscriptions;
//! - [`hubspot`]: HubSpot contacts, custom events and lists;
//! - [`mailchimp`]: Mailchimp members, events and tags;
//! - [`braze`]: Braze attributes, events and purchases;
//! - `lifecycle`: what they share (identifiers, traits, several requests
//!   per batch, a batch's list changes).

pub mod braze;
pub mod hubspot;
pub mod klaviyo;
mod lifecycle;
pub mod mailchimp;
