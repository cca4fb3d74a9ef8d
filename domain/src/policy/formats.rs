//! The documented shapes of the values an ad platform reads in clear: click
//! ids and Meta's cookies, IP addresses and user agents, ISO 4217 currency
//! codes. A value of another shape is not what the field is for (an SSN in
//! `fbc`, a diagnosis in `gclid`, `"HIV"` as a currency), so it is withheld;
//! the rule that failed is recorded, never the value.
//!
//! References: Meta's `fbc` and `fbp` parameters
//! (<https://developers.facebook.com/docs/marketing-api/conversions-api/parameters/fbp-and-fbc>:
//! `fb.{subdomain index}.{creation time in ms}.{fbclid}` and
//! `fb.{subdomain index}.{creation time in ms}.{random number}`); Google's
//! `gclid`, `gbraid` and `wbraid` and TikTok's `ttclid` are opaque tokens of
//! URL-safe characters that each platform issues, tens of characters long;
//! ISO 4217's list of active alphabetic codes.

use std::net::IpAddr;

use crate::destination::IdentifierSource;

use super::detect::{classify_key, classify_value};

/// The fewest characters of a click id (`fbclid`, `gclid`, `ttclid`,
/// `gbraid`, `wbraid`): platforms issue tokens of several dozen.
pub const MIN_CLICK_ID_CHARS: usize = 16;

/// The most characters of a click id.
pub const MAX_CLICK_ID_CHARS: usize = 500;

/// The most characters of a user agent.
pub const MAX_USER_AGENT_CHARS: usize = 512;

/// Why `value` is not a well-formed `source`, in words that hold no part of
/// it; `None` when it is well-formed, or when `source` has no documented
/// shape (emails, phones and the other personal details are normalized and
/// hashed instead, [`crate::hashing`]).
pub fn identifier_problem(source: IdentifierSource, value: &str) -> Option<&'static str> {
    match source {
        IdentifierSource::Fbc => fbc_problem(value),
        IdentifierSource::Fbp => fbp_problem(value),
        IdentifierSource::Gclid | IdentifierSource::Gbraid | IdentifierSource::Wbraid => {
            token_problem(value, |c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
                .map(|_| "not a click id: 16 to 500 letters, digits, '-' or '_', with a letter and a digit")
        }
        IdentifierSource::Ttclid => {
            token_problem(value, |c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '+' | '/' | '='))
                .map(|_| "not a click id: 16 to 500 letters, digits or -_.~+/=, with a letter and a digit")
        }
        IdentifierSource::Ip => value.trim().parse::<IpAddr>().is_err().then_some("not an IPv4 or IPv6 address"),
        IdentifierSource::UserAgent => user_agent_problem(value),
        _ => None,
    }
}

/// `fb.{0-99}.{10-13 digits}.{fbclid}`.
fn fbc_problem(value: &str) -> Option<&'static str> {
    const RULE: &str = "not fb.<subdomain index>.<creation time in ms>.<fbclid>";
    let Some((_, _, fbclid)) = cookie_parts(value.trim()) else { return Some(RULE) };
    token_problem(fbclid, |c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_')).map(|_| RULE)
}

/// `fb.{0-99}.{10-13 digits}.{5-20 digits}`.
fn fbp_problem(value: &str) -> Option<&'static str> {
    const RULE: &str = "not fb.<subdomain index>.<creation time in ms>.<random number>";
    let Some((_, _, random)) = cookie_parts(value.trim()) else { return Some(RULE) };
    let digits = (5..=20).contains(&random.len()) && random.bytes().all(|b| b.is_ascii_digit());
    (!digits).then_some(RULE)
}

/// The subdomain index, creation time and last part of a Meta cookie.
fn cookie_parts(value: &str) -> Option<(&str, &str, &str)> {
    let rest = value.strip_prefix("fb.")?;
    let (index, rest) = rest.split_once('.')?;
    let (time, last) = rest.split_once('.')?;
    let digits = |text: &str, range: std::ops::RangeInclusive<usize>| {
        range.contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit())
    };
    (digits(index, 1..=2) && digits(time, 10..=13)).then_some((index, time, last))
}

/// Whether `token` is an opaque issued token: [`MIN_CLICK_ID_CHARS`] to
/// [`MAX_CLICK_ID_CHARS`] characters of `allowed`, with at least one letter
/// and one digit, and neither a sensitive shape (a date, a phone number) nor
/// words (`HIV-positive`).
fn token_problem(token: &str, allowed: impl Fn(char) -> bool) -> Option<()> {
    let well_formed = (MIN_CLICK_ID_CHARS..=MAX_CLICK_ID_CHARS).contains(&token.len())
        && token.chars().all(allowed)
        && token.chars().any(|c| c.is_ascii_alphabetic())
        && token.chars().any(|c| c.is_ascii_digit());
    let sensitive = || classify_value(token).is_some() || classify_key(token).is_some() || reads_as_words(token);
    (!well_formed || sensitive()).then_some(())
}

/// Whether two or more of the token's `-`, `_`, `.` or `~`-separated parts
/// are words (three or more letters and nothing else): `HIV-positive-2024`
/// is written, an issued token is not.
fn reads_as_words(token: &str) -> bool {
    token
        .split(['-', '_', '.', '~'])
        .filter(|part| part.len() >= 3 && part.chars().all(|c| c.is_ascii_alphabetic()))
        .count()
        >= 2
}

/// A user agent: printable ASCII, no `@` (no email hides in it), at most
/// [`MAX_USER_AGENT_CHARS`] characters, a `product/version` token in it.
fn user_agent_problem(value: &str) -> Option<&'static str> {
    let value = value.trim();
    let well_formed = !value.is_empty()
        && value.len() <= MAX_USER_AGENT_CHARS
        && value.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'@')
        && value.contains('/');
    (!well_formed).then_some("not a user agent: printable ASCII with a product/version, at most 512 characters")
}

/// Whether `code` is an active ISO 4217 alphabetic currency code (upper
/// case, as ISO writes it).
pub fn is_currency(code: &str) -> bool {
    CURRENCIES.binary_search(&code).is_ok()
}

/// ISO 4217's active alphabetic codes, sorted.
const CURRENCIES: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BGN", "BHD", "BIF",
    "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF", "CHE", "CHF", "CHW", "CLF",
    "CLP", "CNY", "COP", "COU", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR",
    "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS",
    "INR", "IQD", "IRR", "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT",
    "LAK", "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP",
    "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE",
    "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS",
    "UAH", "UGX", "USD", "USN", "UYI", "UYU", "UYW", "UZS", "VED", "VES", "VND", "VUV", "WST", "XAF", "XAG", "XAU",
    "XBA", "XBB", "XBC", "XBD", "XCD", "XDR", "XOF", "XPD", "XPF", "XPT", "XSU", "XUA", "YER", "ZAR", "ZMW", "ZWG",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_currency_list_is_sorted_so_it_can_be_searched() {
        assert!(CURRENCIES.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(is_currency("USD") && is_currency("EUR") && !is_currency("HIV") && !is_currency("usd"));
    }

    #[test]
    fn meta_cookies_have_their_documented_shape() {
        let fbc = "fb.1.1554763741205.IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2ofrHyiLjcbCRxTDMgk";
        assert_eq!(identifier_problem(IdentifierSource::Fbc, fbc), None);
        assert_eq!(identifier_problem(IdentifierSource::Fbp, "fb.1.1596403881668.1116446470"), None);
        for bad in ["078-05-1120", "fb.1.1764650000000.HIV-positive-patient", "fb.1.17646.abcdefghijklmnop1"] {
            assert!(identifier_problem(IdentifierSource::Fbc, bad).is_some(), "{bad}");
        }
        for bad in ["1961-04-12", "fb.1.1764650000000.HIV-positive-patient", "fb.1.1764650000000.12"] {
            assert!(identifier_problem(IdentifierSource::Fbp, bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn click_ids_are_opaque_tokens_not_words_dates_or_contacts() {
        let gclid = "Cj0KCQiA4NWrBhD-ARIsAFCKwWsQ2b8vJp3n_HsQ0mVeS0BxE";
        assert_eq!(identifier_problem(IdentifierSource::Gclid, gclid), None);
        assert_eq!(identifier_problem(IdentifierSource::Ttclid, "E.C.P.CqgBGvW1y2hN4tQ3Zy1cw8"), None);
        for bad in ["Type 2 diabetes", "margaret.okafor@example.com", "+1 (312) 555-7734", "1961-04-12", "short1"] {
            for source in [IdentifierSource::Gclid, IdentifierSource::Ttclid, IdentifierSource::Wbraid] {
                assert!(identifier_problem(source, bad).is_some(), "{source:?} {bad}");
            }
        }
        assert!(identifier_problem(IdentifierSource::Gclid, "hiv-positive-patient-2024").is_some());
    }

    #[test]
    fn network_values_are_addresses_and_agents() {
        assert_eq!(identifier_problem(IdentifierSource::Ip, "203.0.113.7"), None);
        assert_eq!(identifier_problem(IdentifierSource::Ip, "2001:db8::1"), None);
        assert!(identifier_problem(IdentifierSource::Ip, "Margaret Okafor").is_some());
        assert_eq!(identifier_problem(IdentifierSource::UserAgent, "Mozilla/5.0 (X11; Linux x86_64)"), None);
        assert!(identifier_problem(IdentifierSource::UserAgent, "patient margaret@example.com/1").is_some());
        assert!(identifier_problem(IdentifierSource::UserAgent, "Type 2 diabetes").is_some());
    }
}
