//! Audiences and computed traits a workspace defines: their definitions,
//! in the workspace's stream.

use serde::{Deserialize, Serialize};

use crate::audience::{ComputedTrait, Condition};

/// An audience was defined, or its definition replaced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudienceDefined {
    /// Its name, unique in the workspace.
    pub name: String,
    /// Who is in it.
    pub condition: Condition,
    /// What it is for, as the operator wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl AudienceDefined {
    /// The stored event type.
    pub const TYPE: &'static str = "AudienceDefined";
}

/// An audience was removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudienceRemoved {
    /// Its name.
    pub name: String,
}

impl AudienceRemoved {
    /// The stored event type.
    pub const TYPE: &'static str = "AudienceRemoved";
}

/// A computed trait was defined, or its definition replaced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComputedTraitDefined {
    /// Its name, unique in the workspace.
    pub name: String,
    /// What it computes.
    pub definition: ComputedTrait,
}

impl ComputedTraitDefined {
    /// The stored event type.
    pub const TYPE: &'static str = "ComputedTraitDefined";
}

/// A computed trait was removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputedTraitRemoved {
    /// Its name.
    pub name: String,
}

impl ComputedTraitRemoved {
    /// The stored event type.
    pub const TYPE: &'static str = "ComputedTraitRemoved";
}
