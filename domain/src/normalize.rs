//! Value-object normalization: one canonical text for an email address, a
//! phone number, a country and a human name, so that the same person sent
//! twice in different spellings is stored (and later matched) the same way.
//!
//! Used by the ingest pipeline and, later, by activation when it hashes
//! identifiers for ad platforms.
//!
//! **Invariants:**
//! * Idempotent: normalizing a normalized value gives it back unchanged.
//! * Total: every function returns, whatever the input; errors are
//!   messages in the house style (`expected an email address, found "foo"`),
//!   without the field name, which the caller knows and prepends.
//!
//! **Does not:** look anything up on the network (no MX checks, no carrier
//! lookups): the tables come with the `phonenumber` and `celes` crates.

use std::str::FromStr;

use unicode_normalization::UnicodeNormalization;

/// Normalizes an email address: trimmed and lowercased, then checked to have
/// exactly one `@`, a non-empty local part, a domain with a dot and no empty
/// labels, and no whitespace.
///
/// ```
/// use onepd_domain::normalize::normalize_email;
/// assert_eq!(normalize_email(" Ann@Example.COM ").unwrap(), "ann@example.com");
/// assert!(normalize_email("foo").is_err());
/// ```
pub fn normalize_email(input: &str) -> Result<String, String> {
    let email = input.trim().to_lowercase();
    let fail = || Err(format!("expected an email address, found {}", quoted(input)));
    if email.chars().any(char::is_whitespace) {
        return fail();
    }
    let Some((local, domain)) = email.split_once('@') else {
        return fail();
    };
    if local.is_empty() || domain.contains('@') || !domain.contains('.') {
        return fail();
    }
    if domain.split('.').any(str::is_empty) {
        return fail();
    }
    Ok(email)
}

/// Normalizes a phone number to E.164 (`+14155552671`). A number written
/// without a country code is read in `default_region` (ISO 3166-1 alpha-2,
/// `US`); without one, the number must start with `+`. The number must be
/// valid for its region according to libphonenumber's metadata.
///
/// ```
/// use onepd_domain::normalize::normalize_phone;
/// assert_eq!(normalize_phone("(415) 555-2671", Some("US")).unwrap(), "+14155552671");
/// assert!(normalize_phone("call me", Some("US")).is_err());
/// ```
pub fn normalize_phone(input: &str, default_region: Option<&str>) -> Result<String, String> {
    let text = input.trim();
    let region = match default_region {
        Some(region) => Some(
            phonenumber::country::Id::from_str(&region.trim().to_ascii_uppercase())
                .map_err(|_| format!("expected an ISO 3166-1 alpha-2 default region, found {}", quoted(region)))?,
        ),
        None => None,
    };
    let fail = || {
        let expected = if region.is_some() {
            "expected a phone number"
        } else {
            "expected a phone number with a country code (+…)"
        };
        format!("{expected}, found {}", quoted(input))
    };
    // Long inputs are not phone numbers; refusing them early bounds the work.
    if text.is_empty() || text.len() > 64 {
        return Err(fail());
    }
    // `00` is the international call prefix in most of the world (`0044 20
    // …` is `+44 20 …`), whatever the default region.
    let international;
    let text = match text.strip_prefix("00") {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit() && c != '0') => {
            international = format!("+{rest}");
            international.as_str()
        }
        _ => text,
    };
    let number = phonenumber::parse(region, text).map_err(|_| fail())?;
    if !phonenumber::is_valid(&number) {
        return Err(fail());
    }
    Ok(number.format().mode(phonenumber::Mode::E164).to_string())
}

/// Normalizes a country to its ISO 3166-1 alpha-2 code, uppercase (`DE`).
/// Accepts alpha-2 and alpha-3 codes and English names (official or common:
/// `Germany`, `United States`), case-insensitively.
///
/// ```
/// use onepd_domain::normalize::normalize_country;
/// assert_eq!(normalize_country("deu").unwrap(), "DE");
/// assert_eq!(normalize_country("Germany").unwrap(), "DE");
/// ```
pub fn normalize_country(input: &str) -> Result<String, String> {
    let fail = || format!("expected an ISO 3166-1 country code or name, found {}", quoted(input));
    let text = input.trim();
    // The table keys names without spaces or punctuation (`unitedstates`);
    // numeric codes are not accepted (they are not what a client means).
    if text.is_empty() || text.len() > 80 || text.chars().any(|c| c.is_ascii_digit()) {
        return Err(fail());
    }
    let key: String = text.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect();
    if key.is_empty() {
        return Err(fail());
    }
    let country = celes::Country::from_str(&key).or_else(|_| celes::Country::from_alias(&key)).map_err(|_| fail())?;
    Ok(country.alpha2.to_ascii_uppercase())
}

/// Unicode NFC normalization, trimmed: the canonical text of a human name, so
/// `"Zoe\u{301}"` and `"Zoé"` are the same name.
pub fn nfc(input: &str) -> String {
    let composed: String = input.trim().nfc().collect();
    match composed.trim() {
        trimmed if trimmed.len() == composed.len() => composed,
        trimmed => trimmed.to_owned(),
    }
}

/// The input as it appears in an error message: JSON-quoted, and cut so an
/// error never repeats a huge payload.
fn quoted(input: &str) -> String {
    const LIMIT: usize = 64;
    if input.len() <= LIMIT {
        return serde_json::Value::from(input).to_string();
    }
    let mut end = LIMIT;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", serde_json::Value::from(&input[..end]))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn an_email_is_trimmed_and_lowercased() {
        assert_eq!(normalize_email(" Ann@Example.COM ").unwrap(), "ann@example.com");
    }

    #[test]
    fn an_email_without_an_at_sign_names_what_was_found() {
        assert_eq!(normalize_email("foo").unwrap_err(), r#"expected an email address, found "foo""#);
    }

    #[test]
    fn malformed_emails_are_refused() {
        for bad in ["", "@example.com", "a@b", "a@b@c.com", "a@example..com", "a@.example.com", "a b@example.com", "a@"]
        {
            assert!(normalize_email(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_us_phone_number_becomes_e164_in_the_default_region() {
        assert_eq!(normalize_phone("(415) 555-2671", Some("US")).unwrap(), "+14155552671");
        assert_eq!(normalize_phone("+44 20 7946 0958", Some("US")).unwrap(), "+442079460958");
        // The international `00` prefix, with or without a default region.
        assert_eq!(normalize_phone("0044 20 7946 0958", None).unwrap(), "+442079460958");
        assert_eq!(normalize_phone("0044 20 7946 0958", Some("US")).unwrap(), "+442079460958");
        assert_eq!(normalize_phone("0049 30 901820", Some("DE")).unwrap(), "+4930901820");
    }

    #[test]
    fn a_phone_number_without_country_code_or_region_is_refused() {
        let error = normalize_phone("415 555 2671", None).unwrap_err();
        assert_eq!(error, r#"expected a phone number with a country code (+…), found "415 555 2671""#);
    }

    #[test]
    fn text_is_not_a_phone_number() {
        assert_eq!(normalize_phone("call me", Some("US")).unwrap_err(), r#"expected a phone number, found "call me""#);
    }

    #[test]
    fn an_unknown_default_region_is_named() {
        let error = normalize_phone("+14155552671", Some("XX")).unwrap_err();
        assert_eq!(error, r#"expected an ISO 3166-1 alpha-2 default region, found "XX""#);
    }

    #[test]
    fn countries_are_read_from_codes_and_english_names() {
        for (input, code) in [
            ("de", "DE"),
            ("DEU", "DE"),
            ("Germany", "DE"),
            ("united states", "US"),
            ("USA", "US"),
            ("United Kingdom", "GB"),
            (" fr ", "FR"),
        ] {
            assert_eq!(normalize_country(input).as_deref(), Ok(code), "{input:?}");
        }
    }

    #[test]
    fn an_unknown_country_is_refused() {
        assert_eq!(
            normalize_country("Atlantis").unwrap_err(),
            r#"expected an ISO 3166-1 country code or name, found "Atlantis""#
        );
        assert!(normalize_country("276").is_err());
    }

    #[test]
    fn a_name_is_composed_and_trimmed() {
        assert_eq!(nfc("  Zoe\u{301} "), "Zo\u{e9}");
    }

    #[test]
    fn a_long_input_is_cut_in_the_error_message() {
        let error = normalize_email(&"é".repeat(100)).unwrap_err();
        assert!(error.len() < 120 && error.ends_with('…'), "{error}");
    }

    proptest! {
        #[test]
        fn email_normalization_is_idempotent(input in "\\PC{0,40}|[ a-zA-Z0-9.@_+-]{0,30}") {
            if let Ok(email) = normalize_email(&input) {
                prop_assert_eq!(normalize_email(&email), Ok(email.clone()));
            }
        }

        #[test]
        fn email_like_inputs_normalize_idempotently(local in "[A-Za-z0-9._+-]{1,12}", domain in "[A-Za-z0-9-]{1,10}\\.[A-Za-z]{2,5}", pad in " {0,2}") {
            let email = normalize_email(&format!("{pad}{local}@{domain}{pad}")).unwrap();
            prop_assert_eq!(normalize_email(&email), Ok(email.clone()));
        }

        #[test]
        fn phone_normalization_is_idempotent(input in "\\+?[0-9 ()-]{0,20}|\\PC{0,20}", region in prop::option::of("US|GB|DE|FR|IN|BR|XX|u")) {
            let region = region.as_deref();
            if let Ok(phone) = normalize_phone(&input, region) {
                prop_assert_eq!(normalize_phone(&phone, region), Ok(phone.clone()));
                prop_assert_eq!(normalize_phone(&phone, None), Ok(phone.clone()));
            }
        }

        #[test]
        fn country_normalization_is_idempotent(input in "[A-Za-z ]{0,20}|\\PC{0,10}") {
            if let Ok(code) = normalize_country(&input) {
                prop_assert_eq!(normalize_country(&code), Ok(code.clone()));
            }
        }

        #[test]
        fn nfc_is_idempotent(input in "\\PC{0,30}|[ \\t\u{300}-\u{36f}a-zA-Z\u{e0}-\u{ff}]{0,20}") {
            let once = nfc(&input);
            prop_assert_eq!(nfc(&once), once.clone());
        }
    }
}
