//! Identifier normalization and SHA-256 hashing to each platform's published
//! rules, and the identifiers each built-in ad platform accepts.
//!
//! [`prepare`] is what the activation engine runs for every identifier it
//! sends: normalize as the [`IdentifierSpec`] says, then hash when asked, never
//! hashing twice a value that is already SHA-256 hex.
//!
//! The per-platform tables ([`meta_identifiers`], [`google_ads_identifiers`],
//! [`tiktok_identifiers`]) are the adapters' `Describe` answers.

use sha2::{Digest, Sha256};

use crate::destination::{Hashing, IdentifierSource, IdentifierSpec, Normalization};

/// Lowercase hex SHA-256 of `value`'s UTF-8 bytes.
pub fn sha256_hex(value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    let mut out = String::with_capacity(64);
    for byte in digest {
        out.push(char::from(b"0123456789abcdef"[(byte >> 4) as usize]));
        out.push(char::from(b"0123456789abcdef"[(byte & 0xf) as usize]));
    }
    out
}

/// Whether `value` is already a SHA-256 digest in hex (64 hex digits, either case).
pub fn is_sha256_hex(value: &str) -> bool {
    value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `raw` in the canonical form `normalization` names, or `None` when nothing
/// usable is left (empty, or not a phone, a date, a gender …).
pub fn normalize(normalization: Normalization, raw: &str) -> Option<String> {
    let trimmed = raw.trim();
    let out = match normalization {
        Normalization::None => raw.to_owned(),
        Normalization::Trim => trimmed.to_owned(),
        Normalization::Lowercase | Normalization::Email => trimmed.to_lowercase(),
        Normalization::EmailGoogle => google_email(trimmed),
        Normalization::PhoneDigits => phone_digits(trimmed)?,
        Normalization::PhoneE164 => format!("+{}", phone_digits(trimmed)?),
        Normalization::Name => {
            trimmed.to_lowercase().chars().filter(|c| !c.is_ascii_punctuation()).collect::<String>().trim().to_owned()
        }
        Normalization::Gender => match trimmed.to_lowercase().chars().next()? {
            'f' | 'w' => "f".to_owned(),
            'm' => "m".to_owned(),
            _ => return None,
        },
        Normalization::DateYyyymmdd => date_yyyymmdd(trimmed)?,
        Normalization::City => trimmed.to_lowercase().chars().filter(|c| c.is_alphanumeric()).collect(),
        Normalization::State => trimmed.to_lowercase().chars().filter(|c| c.is_alphabetic()).collect(),
        Normalization::PostalCode => {
            let code: String = trimmed.to_lowercase().chars().filter(|c| !c.is_whitespace() && *c != '-').collect();
            // A US ZIP+4 keeps its first five digits.
            if code.len() == 9 && code.bytes().all(|b| b.is_ascii_digit()) { code[..5].to_owned() } else { code }
        }
        Normalization::Country => crate::normalize::normalize_country(trimmed).ok()?.to_lowercase(),
    };
    (!out.is_empty()).then_some(out)
}

/// Normalizes and, when `spec` asks, hashes `raw`. A value that is already
/// SHA-256 hex is only lowercased: it was hashed before it reached onepd.
pub fn prepare(spec: &IdentifierSpec, raw: &str) -> Option<String> {
    match spec.hashing {
        Hashing::None => normalize(spec.normalization, raw),
        Hashing::Sha256 if is_sha256_hex(raw.trim()) => Some(raw.trim().to_ascii_lowercase()),
        Hashing::Sha256 => normalize(spec.normalization, raw).map(|value| sha256_hex(&value)),
    }
}

/// Lowercased and trimmed, and for `gmail.com` and `googlemail.com` every
/// `.` before the `@` removed (Google Ads enhanced conversions).
fn google_email(trimmed: &str) -> String {
    let lower = trimmed.to_lowercase();
    match lower.rsplit_once('@') {
        Some((local, domain)) if domain == "gmail.com" || domain == "googlemail.com" => {
            format!("{}@{domain}", local.replace('.', ""))
        }
        _ => lower,
    }
}

/// The digits of a phone number with its country code, no `+` and no
/// leading zeros. Numbers are E.164 after ingest; anything else is tried as
/// an international number.
fn phone_digits(trimmed: &str) -> Option<String> {
    let e164 = crate::normalize::normalize_phone(trimmed, None).ok()?;
    let digits: String = e164.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_start_matches('0');
    (!digits.is_empty()).then(|| digits.to_owned())
}

/// `YYYY-MM-DD` (alone or starting a date-time) or `YYYYMMDD` as `YYYYMMDD`.
fn date_yyyymmdd(trimmed: &str) -> Option<String> {
    let digits: String = trimmed.get(..10).unwrap_or(trimmed).chars().filter(char::is_ascii_digit).collect();
    if digits.len() != 8 {
        return None;
    }
    let month: u32 = digits[4..6].parse().ok()?;
    let day: u32 = digits[6..8].parse().ok()?;
    ((1..=12).contains(&month) && (1..=31).contains(&day)).then_some(digits)
}

fn spec(name: &str, source: IdentifierSource, normalization: Normalization, hashing: Hashing) -> IdentifierSpec {
    IdentifierSpec::new(name, source, normalization, hashing)
}

/// Meta Conversions API `user_data`: `em`, `ph`, `fn`, `ln`, `ge`, `db`, `ct`,
/// `st`, `zp`, `country` and `external_id` hashed; `client_ip_address`,
/// `client_user_agent`, `fbc` and `fbp` never hashed.
pub fn meta_identifiers() -> Vec<IdentifierSpec> {
    use Hashing::{None as Raw, Sha256};
    use IdentifierSource as S;
    use Normalization as N;
    vec![
        spec("em", S::Email, N::Email, Sha256),
        spec("ph", S::Phone, N::PhoneDigits, Sha256),
        spec("fn", S::FirstName, N::Name, Sha256),
        spec("ln", S::LastName, N::Name, Sha256),
        spec("ge", S::Gender, N::Gender, Sha256),
        spec("db", S::DateOfBirth, N::DateYyyymmdd, Sha256),
        spec("ct", S::City, N::City, Sha256),
        spec("st", S::State, N::State, Sha256),
        spec("zp", S::PostalCode, N::PostalCode, Sha256),
        spec("country", S::Country, N::Country, Sha256),
        spec("external_id", S::UserId, N::Trim, Sha256),
        spec("client_ip_address", S::Ip, N::Trim, Raw),
        spec("client_user_agent", S::UserAgent, N::None, Raw),
        spec("fbc", S::Fbc, N::Trim, Raw),
        spec("fbp", S::Fbp, N::Trim, Raw),
    ]
}

/// Google Ads enhanced conversions `user_identifiers`: email (with the
/// gmail dot rule) and E.164 phone (with `+`) hashed; in `address_info`,
/// names and street hashed, city, state, country and postal code sent as
/// they are, as the Google Ads API requires; `gclid` as it is.
pub fn google_ads_identifiers() -> Vec<IdentifierSpec> {
    use Hashing::{None as Raw, Sha256};
    use IdentifierSource as S;
    use Normalization as N;
    vec![
        spec("hashed_email", S::Email, N::EmailGoogle, Sha256),
        spec("hashed_phone_number", S::Phone, N::PhoneE164, Sha256),
        spec("address_info.hashed_first_name", S::FirstName, N::Name, Sha256),
        spec("address_info.hashed_last_name", S::LastName, N::Name, Sha256),
        spec("address_info.hashed_street_address", S::Street, N::Lowercase, Sha256),
        spec("address_info.city", S::City, N::Trim, Raw),
        spec("address_info.state", S::State, N::Trim, Raw),
        spec("address_info.country_code", S::Country, N::Country, Raw),
        spec("address_info.postal_code", S::PostalCode, N::Trim, Raw),
        spec("gclid", S::Gclid, N::Trim, Raw),
    ]
}

/// TikTok Events API `user`: `email`, `phone` (E.164 with `+`) and
/// `external_id` hashed; `ip`, `user_agent` and `ttclid` as they are.
pub fn tiktok_identifiers() -> Vec<IdentifierSpec> {
    use Hashing::{None as Raw, Sha256};
    use IdentifierSource as S;
    use Normalization as N;
    vec![
        spec("email", S::Email, N::Email, Sha256),
        spec("phone", S::Phone, N::PhoneE164, Sha256),
        spec("external_id", S::UserId, N::Trim, Sha256),
        spec("ip", S::Ip, N::Trim, Raw),
        spec("user_agent", S::UserAgent, N::None, Raw),
        spec("ttclid", S::Ttclid, N::Trim, Raw),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hashed_value_is_not_hashed_twice() {
        let spec = spec("em", IdentifierSource::Email, Normalization::Email, Hashing::Sha256);
        let once = prepare(&spec, "ann@example.com").unwrap();
        assert_eq!(prepare(&spec, &once).unwrap(), once);
        assert_eq!(prepare(&spec, &once.to_uppercase()).unwrap(), once);
    }

    #[test]
    fn the_gmail_dot_rule_applies_to_gmail_and_googlemail_only() {
        assert_eq!(normalize(Normalization::EmailGoogle, " Jane.Doe@GMail.com").unwrap(), "janedoe@gmail.com");
        assert_eq!(normalize(Normalization::EmailGoogle, "jane.doe@googlemail.com").unwrap(), "janedoe@googlemail.com");
        assert_eq!(normalize(Normalization::EmailGoogle, "jane.doe@example.com").unwrap(), "jane.doe@example.com");
    }
}
