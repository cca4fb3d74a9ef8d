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

use super::detect::{classify_key, classify_value, is_email};

/// The fewest characters of a click id (`fbclid`, `gclid`, `ttclid`,
/// `gbraid`, `wbraid`): platforms issue tokens of several dozen.
pub const MIN_CLICK_ID_CHARS: usize = 16;

/// The most characters of a click id.
pub const MAX_CLICK_ID_CHARS: usize = 500;

/// The most characters of a user agent.
pub const MAX_USER_AGENT_CHARS: usize = 512;

/// Why `value` is not a well-formed `source`, in words that hold no part of
/// it; `None` when it is well-formed, or when `source` has no documented
/// shape here (phones must normalize to E.164 and the other personal
/// details to their platform forms, [`crate::hashing`]). An email must be
/// one, or its hash would stand for whatever text it is.
pub fn identifier_problem(source: IdentifierSource, value: &str) -> Option<&'static str> {
    match source {
        IdentifierSource::Email => (!is_email(value.trim())).then_some("not an email address"),
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

/// [`identifier_problem`], and for a restricted industry's ad platform a
/// click id whose letters read as text ([`reads_as_text`]) too.
pub fn restricted_identifier_problem(source: IdentifierSource, value: &str) -> Option<&'static str> {
    identifier_problem(source, value).or_else(|| {
        let token = match source {
            IdentifierSource::Fbc => cookie_parts(value.trim()).map(|(_, _, fbclid)| fbclid),
            IdentifierSource::Gclid
            | IdentifierSource::Gbraid
            | IdentifierSource::Wbraid
            | IdentifierSource::Ttclid => Some(value.trim()),
            _ => None,
        };
        token.and_then(|token| {
            if reads_as_text(token) {
                Some("reads as text, not an issued click id")
            } else if longest_digit_run(token) >= 7 {
                Some("holds a run of 7 or more digits (a phone number, an SSN, a date), not an issued click id")
            } else {
                None
            }
        })
    })
}

/// `fb.{0-99}.{creation time in ms, 2015 to 2100}.{fbclid}`.
fn fbc_problem(value: &str) -> Option<&'static str> {
    const RULE: &str = "not fb.<subdomain index>.<creation time in ms>.<fbclid>";
    let Some((_, _, fbclid)) = cookie_parts(value.trim()) else { return Some(RULE) };
    token_problem(fbclid, |c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_')).map(|_| RULE)
}

/// `fb.{0-99}.{creation time in ms, 2015 to 2100}.{random number}`: the
/// random number has 5 to 10 digits and no leading zero, as the Pixel and
/// onepd.js make it, and is not a date written `YYYYMMDD` (a number with a
/// leading zero or 11 digits is an SSN or a phone number, not one made).
fn fbp_problem(value: &str) -> Option<&'static str> {
    const RULE: &str = "not fb.<subdomain index>.<creation time in ms>.<random number>";
    let Some((_, _, random)) = cookie_parts(value.trim()) else { return Some(RULE) };
    let digits = (5..=10).contains(&random.len())
        && random.bytes().all(|b| b.is_ascii_digit())
        && !random.starts_with('0')
        && !is_yyyymmdd(random);
    (!digits).then_some(RULE)
}

/// Whether eight digits are a real date from 1900 to 2100 (`19610412`).
fn is_yyyymmdd(digits: &str) -> bool {
    digits.len() == 8
        && chrono::NaiveDate::parse_from_str(digits, "%Y%m%d")
            .is_ok_and(|date| (1900..=2100).contains(&chrono::Datelike::year(&date)))
}

/// The first and last creation times a Meta cookie may carry, in ms since
/// the epoch: 2015-01-01 and 2100-01-01 (a birth date or a phone number in
/// its place is not a time).
const COOKIE_TIMES: std::ops::RangeInclusive<u64> = 1_420_070_400_000..=4_102_444_800_000;

/// The subdomain index, creation time and last part of a Meta cookie.
fn cookie_parts(value: &str) -> Option<(&str, &str, &str)> {
    let rest = value.strip_prefix("fb.")?;
    let (index, rest) = rest.split_once('.')?;
    let (time, last) = rest.split_once('.')?;
    let index_ok = (1..=2).contains(&index.len()) && index.bytes().all(|b| b.is_ascii_digit());
    let time_ok = time.len() == 13 && time.parse::<u64>().is_ok_and(|ms| COOKIE_TIMES.contains(&ms));
    (index_ok && time_ok).then_some((index, time, last))
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

/// Whether the letters of a click id read as text: its words of three or
/// more letters (split at separators, digits and case changes, as
/// `HIVpositiveMargaret` is) hold eight or more letters, and more than half
/// of their adjacent letter pairs are among the 150 most common in English.
/// Issued tokens are random: about 1 in 100 reads as text by this rule (and
/// is withheld from a restricted industry's ad platforms), while written
/// words (`Depression1.Sertraline50mg`, `HIVpositiveMargaretOkafor2024`)
/// nearly always do. A token that is an encoding of text (base64) cannot
/// be told from an issued one.
pub fn reads_as_text(token: &str) -> bool {
    let mut words: Vec<String> = Vec::new();
    let chars: Vec<char> = token.chars().collect();
    let mut current = String::new();
    for (i, &c) in chars.iter().enumerate() {
        let boundary = !c.is_ascii_alphabetic()
            || (c.is_ascii_uppercase() && i > 0 && chars[i - 1].is_ascii_lowercase())
            || (c.is_ascii_uppercase()
                && chars.get(i + 1).is_some_and(char::is_ascii_lowercase)
                && i > 0
                && chars[i - 1].is_ascii_uppercase());
        if boundary && !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
        if c.is_ascii_alphabetic() {
            current.push(c.to_ascii_lowercase());
        }
    }
    words.push(current);
    words.retain(|word| word.len() >= 3);
    let letters: usize = words.iter().map(String::len).sum();
    let pairs: Vec<&str> = words.iter().flat_map(|word| (0..word.len() - 1).map(move |i| &word[i..i + 2])).collect();
    let common = pairs.iter().filter(|pair| COMMON_PAIRS.contains(pair)).count();
    if letters >= 8 && !pairs.is_empty() && common * 100 > pairs.len() * 55 {
        return true;
    }
    // Case games and single digits between letters (`mArGaReT`,
    // `Hi1v2Po3si`) read the same once the letters are put together.
    let letters: String = token.chars().filter(char::is_ascii_alphabetic).map(|c| c.to_ascii_lowercase()).collect();
    let pairs = letters.len().saturating_sub(1);
    let common = (0..pairs).filter(|&i| COMMON_PAIRS.contains(&&letters[i..i + 2])).count();
    letters.len() >= 8 && common * 100 > pairs * 50
}

/// The longest run of ASCII digits in `text`.
fn longest_digit_run(text: &str) -> usize {
    text.split(|c: char| !c.is_ascii_digit()).map(str::len).max().unwrap_or(0)
}

/// The most common adjacent letter pairs of English text.
const COMMON_PAIRS: &[&str] = &[
    "th", "he", "in", "er", "an", "re", "on", "at", "en", "nd", "ti", "es", "or", "te", "of", "ed", "is", "it", "al",
    "ar", "st", "to", "nt", "ng", "se", "ha", "as", "ou", "io", "le", "ve", "co", "me", "de", "hi", "ri", "ro", "ic",
    "ne", "ea", "ra", "ce", "li", "ch", "ll", "be", "ma", "si", "om", "ur", "ca", "el", "ta", "la", "ns", "di", "fo",
    "ho", "pe", "ec", "pr", "no", "ct", "us", "ac", "ot", "il", "tr", "ly", "nc", "et", "ut", "ss", "so", "rs", "un",
    "lo", "wa", "ge", "ie", "wh", "ee", "wi", "em", "ad", "ol", "rt", "po", "we", "na", "ul", "ni", "ts", "mo", "ow",
    "pa", "im", "mi", "ai", "sh", "ir", "su", "id", "os", "iv", "ia", "am", "fi", "ci", "vi", "pl", "ig", "tu", "ev",
    "ld", "ry", "mp", "fe", "bl", "ab", "gh", "ty", "op", "wo", "sa", "ay", "ex", "ke", "fr", "oo", "av", "ag", "if",
    "ap", "gr", "od", "bo", "sp", "rd", "do", "uc", "bu", "ei", "ov", "by", "rm", "ep", "tt", "oc",
];

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

/// `text` (a destination's answer, an adapter's error) with what looks like
/// a person's data replaced by `<redacted>`: runs of 7 or more digits with
/// the separators phone numbers, SSNs and dates are written with, and any
/// word that is an email, a phone number, an SSN, a date, a card or account
/// number, an IP address or a URL. Status codes and short error codes stay,
/// so the delivery ledger keeps why a destination refused an event without
/// keeping whom it was about (`invalid user data: email <redacted> phone
/// <redacted>`).
pub fn redact_text(text: &str) -> String {
    // Digit runs first: a phone number spans several words.
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let part_of_number = |c: char| c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')' | '+' | '/');
        if chars[i].is_ascii_digit() || (chars[i] == '+' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            let mut end = i;
            while end < chars.len() && part_of_number(chars[end]) {
                end += 1;
            }
            // A run ends on a digit or a closing parenthesis, not on spaces.
            while end > i && !chars[end - 1].is_ascii_digit() && chars[end - 1] != ')' {
                end -= 1;
            }
            let digits = chars[i..end].iter().filter(|c| c.is_ascii_digit()).count();
            if digits >= 7 {
                out.push_str("<redacted>");
                i = end;
                continue;
            }
            out.extend(&chars[i..end.max(i + 1)]);
            i = end.max(i + 1);
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out.split(' ')
        .map(|word| {
            let core = word.trim_matches(|c: char| {
                matches!(c, '"' | '\'' | ',' | ';' | ':' | '(' | ')' | '[' | ']' | '{' | '}' | '<' | '>')
            });
            if !core.is_empty() && core != "<redacted>" && (core.contains('@') || classify_value(core).is_some()) {
                word.replace(core, "<redacted>")
            } else {
                word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
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
    fn written_words_read_as_text_and_issued_tokens_do_not() {
        for written in [
            "HIVpositiveMargaretOkafor2024",
            "HIV1-positive1-Margaret1-Okafor1",
            "Diabetes2-Metformin500mg-Okafor7",
            "Depression1.Sertraline50mg.Okafor1",
            "E.C.P.HIVpositive1.Okafor2Margaret",
        ] {
            assert!(reads_as_text(written), "{written}");
        }
        for issued in [
            "Cj0KCQiA4NWrBhD-ARIsAFCKwWsQ2b8vJp3n_HsQ0mVeS0BxE",
            "IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2ofrHyiLjcbCRxTDMgk",
            "E.C.P.CqgBGvW1y2hN4tQ3Zy1cw8",
        ] {
            assert!(!reads_as_text(issued), "{issued}");
        }
    }

    #[test]
    fn case_games_interleaved_digits_and_digit_runs_do_not_pass_for_click_ids() {
        for planted in [
            "mArGaReToKaFoRhIvPoSiTiVe1",
            "Hi1v2Po3si4ti5ve6Ma7rg8ar9et0Ok1af2or",
            "Cj0KCQ078051120xQzK",
            "xQz13125557734kWp",
            "xQz19610412kWpZrT",
        ] {
            assert!(restricted_identifier_problem(IdentifierSource::Gclid, planted).is_some(), "{planted}");
        }
        for planted in ["fb.1.1596403881668.13125557734", "fb.1.1596403881668.078051120", "fb.1.1596403881668.19610412"]
        {
            assert!(identifier_problem(IdentifierSource::Fbp, planted).is_some(), "{planted}");
        }
        assert_eq!(identifier_problem(IdentifierSource::Fbp, "fb.1.1596403881668.1116446470"), None);
    }

    #[test]
    fn a_destinations_answer_keeps_its_status_and_code_but_no_persons_data() {
        let answer = "HTTP 400 Bad Request: {\"error\":{\"code\":100,\"message\":\"invalid user data: email \
                      ann.lee@example.com phone +1 (415) 555-0100 ssn 078-05-1120 born 1961-04-12 ip 203.0.113.9\"}}";
        let redacted = redact_text(answer);
        for planted in ["ann.lee", "example.com", "415", "555-0100", "078-05-1120", "1961-04-12", "203.0.113.9"] {
            assert!(!redacted.contains(planted), "{planted} in {redacted}");
        }
        assert!(redacted.starts_with("HTTP 400 Bad Request:") && redacted.contains("\"code\":100"), "{redacted}");
        assert_eq!(redact_text("timed out after 30 s"), "timed out after 30 s");
    }

    #[test]
    fn a_cookies_creation_time_is_a_time_and_an_email_is_an_email() {
        let birth_date_as_time = "fb.1.19610412000.IwAR2F4dbP0l7Mn1IawQQGCINEz7PYXQv";
        assert!(identifier_problem(IdentifierSource::Fbc, birth_date_as_time).is_some());
        assert_eq!(identifier_problem(IdentifierSource::Email, "margaret@example.com"), None);
        assert!(identifier_problem(IdentifierSource::Email, "HIV positive Type 2 diabetes").is_some());
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
