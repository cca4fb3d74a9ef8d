//! Audience conditions: the language a workspace defines audiences in, and
//! its evaluation against one person as of one time.
//!
//! # Layout
//!
//! * [`condition`]: the condition tree ([`Condition`]), its JSON form and
//!   its checks ([`Condition::validate`]).
//! * [`syntax`]: the readable form, parsed ([`parse`]) and printed
//!   ([`Condition`]'s `Display`), so that a definition read back shows as
//!   it was written.
//! * [`computed`]: computed traits, values derived from a person's events
//!   (counts, sums, averages, first and last values, …) over a window.
//! * [`evaluate`]: whether a [`Person`] meets a condition at a time, why
//!   (the events and traits that decided it), and the next time the answer
//!   can change without a new event (a window's edge).
//!
//! ```text
//! performed "Order Completed" at least 2 times within 90 days
//!   and not performed "Order Completed" within 7 days of "Product Viewed"
//!   and (trait plan = "pro" or computed lifetime_revenue > 500)
//!   and not in audience "churned"
//! ```
//!
//! **Invariant:** pure. The time a condition is evaluated at is an
//! argument, never the clock: a rebuild evaluating at the recorded times
//! gives the same entries and exits.
//!
//! **Does not:** keep membership, read events or profiles, or know how a
//! person's events are stored: a [`Person`] answers for them.

pub mod computed;
pub mod condition;
pub mod evaluate;
pub mod syntax;

pub use computed::{ComputedTrait, Kind};
pub use condition::{Comparison, Condition, Count, EventCondition, Operator, PropertyFilter, ValueCondition, Window};
pub use evaluate::{EventFact, Explanation, Person, Verdict, WithAudiences, evaluate, holds};
pub use syntax::{ParseError, parse};
