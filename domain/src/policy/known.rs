//! Field paths onepd knows by name: the Segment spec's common fields,
//! context, traits and e-commerce properties. A scrub of a field at one of
//! these paths (or one the tracking plan declares) is recorded by its path;
//! any other key was chosen by a client and may itself be sensitive
//! (`Have you ever been diagnosed with HIV?`), so its path is recorded as a
//! class and a keyed digest instead.

/// The Segment spec's paths (`[]` for an array's elements). A trait path is
/// known under both `traits.` and `context.traits.`.
const SPEC_PATHS: &[&str] = &[
    // Common fields.
    "name",
    "category",
    "userId",
    "anonymousId",
    "previousId",
    "groupId",
    "properties",
    "traits",
    "context",
    // Context.
    "context.active",
    "context.app",
    "context.app.name",
    "context.app.version",
    "context.app.build",
    "context.app.namespace",
    "context.campaign",
    "context.campaign.name",
    "context.campaign.source",
    "context.campaign.medium",
    "context.campaign.term",
    "context.campaign.content",
    "context.device",
    "context.device.id",
    "context.device.advertisingId",
    "context.device.adTrackingEnabled",
    "context.device.manufacturer",
    "context.device.model",
    "context.device.name",
    "context.device.type",
    "context.device.token",
    "context.ip",
    "context.library",
    "context.library.name",
    "context.library.version",
    "context.locale",
    "context.location",
    "context.location.city",
    "context.location.country",
    "context.location.latitude",
    "context.location.longitude",
    "context.location.region",
    "context.location.speed",
    "context.network",
    "context.network.bluetooth",
    "context.network.carrier",
    "context.network.cellular",
    "context.network.wifi",
    "context.os",
    "context.os.name",
    "context.os.version",
    "context.page",
    "context.page.path",
    "context.page.referrer",
    "context.page.search",
    "context.page.title",
    "context.page.url",
    "context.referrer",
    "context.referrer.id",
    "context.referrer.type",
    "context.screen",
    "context.screen.width",
    "context.screen.height",
    "context.screen.density",
    "context.groupId",
    "context.timezone",
    "context.userAgent",
    "context.userAgentData",
    "context.traits",
    "context.consent",
    "context.consent.categoryPreferences",
    "context.consentManagement",
    "context.consentManagement.allowedConsentIds",
    "context.consentManagement.deniedConsentIds",
    "context.fbc",
    "context.fbp",
    "context.clickIds",
    "context.clickIds.gclid",
    "context.clickIds.gbraid",
    "context.clickIds.wbraid",
    "context.clickIds.ttclid",
    "context.clickIds.fbclid",
    "context.clickIds.msclkid",
    "context.clickIds.gclid.value",
    "context.clickIds.gclid.capturedAt",
    "context.clickIds.gbraid.value",
    "context.clickIds.gbraid.capturedAt",
    "context.clickIds.wbraid.value",
    "context.clickIds.wbraid.capturedAt",
    "context.clickIds.ttclid.value",
    "context.clickIds.ttclid.capturedAt",
    "context.clickIds.fbclid.value",
    "context.clickIds.fbclid.capturedAt",
    "context.clickIds.msclkid.value",
    "context.clickIds.msclkid.capturedAt",
    // E-commerce and page properties.
    "properties.order_id",
    "properties.checkout_id",
    "properties.affiliation",
    "properties.total",
    "properties.subtotal",
    "properties.revenue",
    "properties.shipping",
    "properties.tax",
    "properties.discount",
    "properties.coupon",
    "properties.currency",
    "properties.value",
    "properties.products",
    "properties.products[]",
    "properties.products[].product_id",
    "properties.products[].sku",
    "properties.products[].category",
    "properties.products[].name",
    "properties.products[].brand",
    "properties.products[].variant",
    "properties.products[].price",
    "properties.products[].quantity",
    "properties.products[].coupon",
    "properties.products[].position",
    "properties.products[].url",
    "properties.products[].image_url",
    "properties.product_id",
    "properties.sku",
    "properties.category",
    "properties.name",
    "properties.brand",
    "properties.variant",
    "properties.price",
    "properties.quantity",
    "properties.url",
    "properties.image_url",
    "properties.query",
    "properties.list_id",
    "properties.cart_id",
    "properties.step",
    "properties.shipping_method",
    "properties.payment_method",
    "properties.promotion_id",
    "properties.creative",
    "properties.position",
    "properties.title",
    "properties.path",
    "properties.referrer",
    "properties.search",
    "properties.keywords",
];

/// The Segment spec's reserved traits, relative to `traits`.
const SPEC_TRAITS: &[&str] = &[
    "address",
    "address.city",
    "address.country",
    "address.postalCode",
    "address.postal_code",
    "address.state",
    "address.street",
    "age",
    "avatar",
    "birthday",
    "company",
    "company.name",
    "company.id",
    "company.industry",
    "company.employee_count",
    "company.plan",
    "createdAt",
    "description",
    "email",
    "firstName",
    "first_name",
    "gender",
    "id",
    "lastName",
    "last_name",
    "name",
    "phone",
    "title",
    "username",
    "website",
];

/// Whether `path` (dotted, `[]` for array elements) is a Segment spec path:
/// an envelope field, a common field, a context or e-commerce path, a
/// property onepd strips by name, or a reserved trait.
pub(crate) fn is_spec_path(path: &str) -> bool {
    if SPEC_PATHS.contains(&path) || super::ENVELOPE.contains(&path) {
        return true;
    }
    if path.strip_prefix("properties.").is_some_and(|name| super::IDENTIFYING_PROPERTIES.contains(&name)) {
        return true;
    }
    path.strip_prefix("traits.")
        .or_else(|| path.strip_prefix("context.traits."))
        .is_some_and(|traits| SPEC_TRAITS.contains(&traits))
}

/// A scrubbed field's name from a ledger entry written before client keys
/// were recorded by class and digest, as readers are shown it: its longest
/// Segment-spec prefix, then `<unknown>` (`properties.<unknown>`).
/// Identifier names (`identifiers.em`) are the adapter's own and kept.
pub fn legacy_field(name: &str) -> String {
    if name.starts_with("identifiers.") || is_spec_path(name) {
        return name.to_owned();
    }
    let mut known = String::new();
    for segment in name.split('.') {
        let candidate = if known.is_empty() { segment.to_owned() } else { format!("{known}.{segment}") };
        if !is_spec_path(&candidate) {
            break;
        }
        known = candidate;
    }
    if known.is_empty() { "<unknown>".to_owned() } else { format!("{known}.<unknown>") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_legacy_name_is_cut_at_its_first_unknown_segment() {
        assert_eq!(legacy_field("properties.Have you ever been diagnosed with HIV?"), "properties.<unknown>");
        assert_eq!(legacy_field("context.page.url"), "context.page.url");
        assert_eq!(legacy_field("traits.email"), "traits.email");
        assert_eq!(legacy_field("identifiers.client_ip_address"), "identifiers.client_ip_address");
        assert_eq!(legacy_field("Margaret Okafor DOB"), "<unknown>");
    }
}
