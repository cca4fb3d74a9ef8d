//! Identifier normalization and SHA-256 hashing to each platform's published
//! rules, and the identifiers each built-in ad platform accepts.
//!
//! [`prepare`] is what the activation engine runs for every identifier it
//! sends: normalize as the [`IdentifierSpec`] says, then hash when asked, never
//! hashing twice a value that is already SHA-256 hex.
//!
//! The per-platform tables ([`meta_identifiers`], [`google_ads_identifiers`],
//! [`tiktok_identifiers`]) are the adapters' `Describe` answers. Their field
//! names and rules follow the platforms' own pages:
//!
//! * Meta Conversions API, customer information parameters:
//!   <https://developers.facebook.com/docs/marketing-api/conversions-api/parameters/customer-information-parameters>
//! * Google Ads API, enhanced conversions for web (trim, lowercase, E.164,
//!   the gmail dot rule):
//!   <https://developers.google.com/google-ads/api/docs/conversions/enhanced-conversions/web>,
//!   and `OfflineUserAddressInfo` for the address fields:
//!   <https://developers.google.com/google-ads/api/reference/rpc/latest/OfflineUserAddressInfo>
//! * TikTok Events API 2.0, the `user` object:
//!   <https://business-api.tiktok.com/portal/docs?id=1771100865818625>
//!
//! **Invariants:** a value with nothing but whitespace is never sent; a
//! hashed value is 64 lowercase hex digits; a value that cannot be put in the
//! platform's form (a phone without a country code, an ambiguous date) is
//! dropped rather than sent in a form the platform would not match.
//!
//! **Does not:** guess a phone number's country (ingest stores E.164), or read
//! a day-first or month-first date (`2/3/1990` is either).

use sha2::{Digest, Sha256};
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use crate::destination::{Hashing, IdentifierSource, IdentifierSpec, Normalization};
use crate::normalize::{normalize_country, normalize_phone};

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
/// usable is left (empty or only whitespace, or not a phone, a date, a
/// gender, a country …).
pub fn normalize(normalization: Normalization, raw: &str) -> Option<String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return None;
    }
    let out = match normalization {
        Normalization::None => raw.to_owned(),
        Normalization::Trim => trimmed.to_owned(),
        Normalization::Lowercase | Normalization::Email => trimmed.to_lowercase(),
        Normalization::EmailGoogle => google_email(trimmed),
        // E.164 without its `+`: the country code first, and no leading zero
        // (an E.164 country code never starts with one).
        Normalization::PhoneDigits => e164(trimmed)?[1..].to_owned(),
        Normalization::PhoneE164 => e164(trimmed)?,
        Normalization::Name => name(trimmed, Punctuation::Remove),
        Normalization::FirstNameGoogle => name(trimmed, Punctuation::Keep),
        Normalization::Gender => gender(trimmed)?.to_owned(),
        Normalization::DateYyyymmdd => date_yyyymmdd(trimmed)?,
        Normalization::City => compact(trimmed),
        Normalization::State => state(trimmed),
        Normalization::PostalCode => postal_code(trimmed),
        Normalization::Country => normalize_country(trimmed).ok()?.to_ascii_lowercase(),
        Normalization::CountryUppercase => normalize_country(trimmed).ok()?,
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

/// Meta Conversions API `user_data`: `em`, `ph` (digits, country code first),
/// `fn`, `ln`, `ge`, `db`, `ct`, `st`, `zp`, `country` and `external_id`
/// hashed; `client_ip_address`, `client_user_agent`, `fbc` and `fbp` never
/// hashed.
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
/// gmail dot rule) and E.164 phone (with `+`) hashed; in `address_info`
/// (`OfflineUserAddressInfo`), first name (lowercase, extra spaces removed),
/// last name (lowercase, no punctuation) and street (lowercase) hashed, and
/// city, state, country code (ISO 3166-1 alpha-2, as ISO writes it) and
/// postal code sent in clear, as the Google Ads API requires; `gclid`,
/// `gbraid` and `wbraid` (the iOS click ids) as they are.
pub fn google_ads_identifiers() -> Vec<IdentifierSpec> {
    use Hashing::{None as Raw, Sha256};
    use IdentifierSource as S;
    use Normalization as N;
    vec![
        spec("hashed_email", S::Email, N::EmailGoogle, Sha256),
        spec("hashed_phone_number", S::Phone, N::PhoneE164, Sha256),
        spec("address_info.hashed_first_name", S::FirstName, N::FirstNameGoogle, Sha256),
        spec("address_info.hashed_last_name", S::LastName, N::Name, Sha256),
        spec("address_info.hashed_street_address", S::Street, N::Lowercase, Sha256),
        spec("address_info.city", S::City, N::Trim, Raw),
        spec("address_info.state", S::State, N::Trim, Raw),
        spec("address_info.country_code", S::Country, N::CountryUppercase, Raw),
        spec("address_info.postal_code", S::PostalCode, N::Trim, Raw),
        spec("gclid", S::Gclid, N::Trim, Raw),
        spec("gbraid", S::Gbraid, N::Trim, Raw),
        spec("wbraid", S::Wbraid, N::Trim, Raw),
    ]
}

/// TikTok Events API 2.0 `user`: `email` (trimmed, lowercase), `phone`
/// (E.164 with `+`) and `external_id` hashed; `ip`, `user_agent` and
/// `ttclid` as they are.
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

/// Lowercased and trimmed, and for `gmail.com` and `googlemail.com` every
/// `.` before the `@` removed (Google Ads enhanced conversions). Other
/// domains keep their dots, and the domain itself is never changed.
fn google_email(trimmed: &str) -> String {
    let lower = trimmed.to_lowercase();
    match lower.rsplit_once('@') {
        Some((local, domain)) if domain == "gmail.com" || domain == "googlemail.com" => {
            format!("{}@{domain}", local.replace('.', ""))
        }
        _ => lower,
    }
}

/// The number in E.164 (`+14155552671`), or `None` without a country code.
fn e164(trimmed: &str) -> Option<String> {
    // `00` is the international call prefix (`0044 20 …` is `+44 20 …`),
    // read by `normalize_phone` as at ingest; Meta's "remove any leading
    // zeros" reads it the same way.
    normalize_phone(trimmed, None).ok()
}

/// Whether [`name`] keeps punctuation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Punctuation {
    Keep,
    Remove,
}

/// A name lowercased, composed (NFC, so `Vale\u{301}ry` and `Valéry` hash
/// the same) and with runs of whitespace cut to one space and trimmed; with
/// [`Punctuation::Remove`], every character that is not a letter, a digit, a
/// combining mark or whitespace dropped first.
fn name(trimmed: &str, punctuation: Punctuation) -> String {
    let lower = trimmed.to_lowercase();
    let kept: String =
        lower.chars().filter(|&c| punctuation == Punctuation::Keep || is_word_char(c) || c.is_whitespace()).collect();
    let spaced = kept.split_whitespace().collect::<Vec<_>>().join(" ");
    spaced.nfc().collect()
}

/// Lowercased and composed, with only letters, digits and combining marks
/// kept: no spaces, punctuation or symbols (Meta's `ct` and `st`).
fn compact(trimmed: &str) -> String {
    let kept: String = trimmed.to_lowercase().chars().filter(|&c| is_word_char(c)).collect();
    kept.nfc().collect()
}

/// A letter or digit of any script, or a combining mark (an accent written
/// apart from its letter, a vowel sign).
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || is_combining_mark(c)
}

/// `f` or `m` from the words people write for them; anything else is
/// unknown rather than guessed (the first letter of `mujer` is not `m`ale).
fn gender(trimmed: &str) -> Option<&'static str> {
    match trimmed.to_lowercase().as_str() {
        "f" | "female" | "woman" => Some("f"),
        "m" | "male" | "man" => Some("m"),
        _ => None,
    }
}

/// `YYYY-MM-DD` (alone or starting an ISO 8601 date-time), `YYYY/MM/DD`,
/// `YYYY.MM.DD` or `YYYYMMDD` as `YYYYMMDD`, for a real calendar date from
/// 1900 on. Day-first and month-first dates are refused: `2/3/1990` is either.
fn date_yyyymmdd(trimmed: &str) -> Option<String> {
    // The date of a date-time is what comes before its `T` (or a space).
    let date = trimmed.split(['T', 't', ' ']).next()?;
    if !date.is_ascii() {
        return None;
    }
    let digits = match date.as_bytes() {
        [_, _, _, _, _, _, _, _] => date.to_owned(),
        [_, _, _, _, sep @ (b'-' | b'/' | b'.'), _, _, sep2, _, _] if sep == sep2 => {
            format!("{}{}{}", &date[..4], &date[5..7], &date[8..])
        }
        _ => return None,
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i32 = digits[..4].parse().ok()?;
    let month: u32 = digits[4..6].parse().ok()?;
    let day: u32 = digits[6..].parse().ok()?;
    (year >= 1900 && chrono::NaiveDate::from_ymd_opt(year, month, day).is_some()).then_some(digits)
}

/// A US state, district or territory as its two-letter code, lowercased
/// (`California` and `CA` are `ca`); any other region [`compact`]ed.
fn state(trimmed: &str) -> String {
    let key = compact(trimmed);
    match US_STATES.iter().find(|(name, _)| *name == key) {
        Some((_, code)) => (*code).to_owned(),
        None => key,
    }
}

/// US state, district and territory names (as [`compact`] writes them) and
/// their two-letter FIPS / USPS codes.
const US_STATES: [(&str, &str); 56] = [
    ("alabama", "al"),
    ("alaska", "ak"),
    ("arizona", "az"),
    ("arkansas", "ar"),
    ("california", "ca"),
    ("colorado", "co"),
    ("connecticut", "ct"),
    ("delaware", "de"),
    ("districtofcolumbia", "dc"),
    ("florida", "fl"),
    ("georgia", "ga"),
    ("hawaii", "hi"),
    ("idaho", "id"),
    ("illinois", "il"),
    ("indiana", "in"),
    ("iowa", "ia"),
    ("kansas", "ks"),
    ("kentucky", "ky"),
    ("louisiana", "la"),
    ("maine", "me"),
    ("maryland", "md"),
    ("massachusetts", "ma"),
    ("michigan", "mi"),
    ("minnesota", "mn"),
    ("mississippi", "ms"),
    ("missouri", "mo"),
    ("montana", "mt"),
    ("nebraska", "ne"),
    ("nevada", "nv"),
    ("newhampshire", "nh"),
    ("newjersey", "nj"),
    ("newmexico", "nm"),
    ("newyork", "ny"),
    ("northcarolina", "nc"),
    ("northdakota", "nd"),
    ("ohio", "oh"),
    ("oklahoma", "ok"),
    ("oregon", "or"),
    ("pennsylvania", "pa"),
    ("rhodeisland", "ri"),
    ("southcarolina", "sc"),
    ("southdakota", "sd"),
    ("tennessee", "tn"),
    ("texas", "tx"),
    ("utah", "ut"),
    ("vermont", "vt"),
    ("virginia", "va"),
    ("washington", "wa"),
    ("westvirginia", "wv"),
    ("wisconsin", "wi"),
    ("wyoming", "wy"),
    ("americansamoa", "as"),
    ("guam", "gu"),
    ("northernmarianaislands", "mp"),
    ("puertorico", "pr"),
    ("usvirginislands", "vi"),
];

/// Lowercased, without spaces or dashes (`M1 1AE` is `m11ae`); a US ZIP+4
/// (nine digits once the dash is gone) cut to its first five digits.
fn postal_code(trimmed: &str) -> String {
    let code: String = trimmed.to_lowercase().chars().filter(|c| !c.is_whitespace() && *c != '-').collect();
    if code.len() == 9 && code.bytes().all(|b| b.is_ascii_digit()) { code[..5].to_owned() } else { code }
}

fn spec(name: &str, source: IdentifierSource, normalization: Normalization, hashing: Hashing) -> IdentifierSpec {
    IdentifierSpec::new(name, source, normalization, hashing)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::destination::{Category, Description};

    fn meta(field: &str) -> IdentifierSpec {
        meta_identifiers().into_iter().find(|spec| spec.name == field).unwrap()
    }

    fn google(field: &str) -> IdentifierSpec {
        google_ads_identifiers().into_iter().find(|spec| spec.name == field).unwrap()
    }

    fn tiktok(field: &str) -> IdentifierSpec {
        tiktok_identifiers().into_iter().find(|spec| spec.name == field).unwrap()
    }

    fn normalized(normalization: Normalization, raw: &str) -> Option<String> {
        normalize(normalization, raw)
    }

    // Meta's own examples, input to published SHA-256, from
    // developers.facebook.com/docs/marketing-api/conversions-api/parameters/customer-information-parameters.

    #[test]
    fn metas_email_example_hashes_to_the_published_value() {
        let expected = "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f";
        assert_eq!(normalized(Normalization::Email, "John_Smith@gmail.com").unwrap(), "john_smith@gmail.com");
        assert_eq!(prepare(&meta("em"), "John_Smith@gmail.com").unwrap(), expected);
        assert_eq!(prepare(&meta("em"), "  John_Smith@GMAIL.com\t").unwrap(), expected);
    }

    #[test]
    fn metas_phone_example_hashes_to_the_published_value() {
        assert_eq!(normalized(Normalization::PhoneDigits, "+1 (650) 555-1212").unwrap(), "16505551212");
        assert_eq!(
            prepare(&meta("ph"), "+1 (650) 555-1212").unwrap(),
            "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"
        );
    }

    #[test]
    fn metas_name_examples_hash_to_the_published_values() {
        for (input, normal, hash) in [
            ("Mary", "mary", "6915771be1c5aa0c886870b6951b03d7eafc121fea0e80a5ea83beb7c449f4ec"),
            ("정", "정", "8fa8cd9c440be61d0151429310034083132b35975c4bea67fdd74158eb51db14"),
            ("Valéry", "valéry", "08e1996b5dd49e62a4b4c010d44e4345592a863bb9f8e3976219bac29417149c"),
            // The same name with its accent written apart (NFD) is composed first.
            ("Vale\u{301}ry", "valéry", "08e1996b5dd49e62a4b4c010d44e4345592a863bb9f8e3976219bac29417149c"),
        ] {
            assert_eq!(normalized(Normalization::Name, input).unwrap(), normal, "{input:?}");
            assert_eq!(prepare(&meta("fn"), input).unwrap(), hash, "{input:?}");
            assert_eq!(prepare(&meta("ln"), input).unwrap(), hash, "{input:?}");
        }
    }

    #[test]
    fn metas_date_of_birth_example_hashes_to_the_published_value() {
        // Meta writes the input as 2/16/1997; onepd reads only year-first dates.
        assert_eq!(normalized(Normalization::DateYyyymmdd, "1997-02-16").unwrap(), "19970216");
        assert_eq!(
            prepare(&meta("db"), "1997-02-16").unwrap(),
            "01acdbf6ec7b4f478a225f1a246e5d6767eeab1a7ffa17f025265b5b94f40f0c"
        );
    }

    #[test]
    fn metas_country_example_hashes_to_the_published_value() {
        assert_eq!(normalized(Normalization::Country, "United States").unwrap(), "us");
        assert_eq!(
            prepare(&meta("country"), "United States").unwrap(),
            "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"
        );
    }

    // The other expected digests below were computed apart from this crate,
    // with Python's hashlib, from the normalized strings the docs call for.

    #[test]
    fn emails_are_trimmed_and_lowercased() {
        for normalization in [Normalization::Email, Normalization::EmailGoogle] {
            assert_eq!(normalized(normalization, " Ann@Example.COM \n").unwrap(), "ann@example.com");
        }
        assert_eq!(prepare(&tiktok("email"), " John_Smith@Gmail.com ").unwrap(), sha256_hex("john_smith@gmail.com"));
    }

    #[test]
    fn the_gmail_dot_rule_applies_to_gmail_and_googlemail_only() {
        let google_email = |raw| normalized(Normalization::EmailGoogle, raw).unwrap();
        assert_eq!(google_email(" Jane.Doe@GMail.com"), "janedoe@gmail.com");
        assert_eq!(google_email("jane.doe@googlemail.com"), "janedoe@googlemail.com");
        assert_eq!(google_email("jane.doe@example.com"), "jane.doe@example.com");
        assert_eq!(google_email("jane.doe@mail.gmail.com"), "jane.doe@mail.gmail.com");
        // Meta and TikTok keep the dots.
        assert_eq!(normalized(Normalization::Email, "Jane.Doe@gmail.com").unwrap(), "jane.doe@gmail.com");
        assert_eq!(
            prepare(&google("hashed_email"), "Jane.Doe@gmail.com").unwrap(),
            "d6117306485ed0e50afab3ac871e98f81699151f30281527d63ff5f233656c69"
        );
    }

    #[test]
    fn the_gmail_dot_rule_never_touches_the_domain() {
        let google_email = normalized(Normalization::EmailGoogle, "a.b.c@gmail.com").unwrap();
        assert_eq!(google_email, "abc@gmail.com");
        assert!(google_email.ends_with("@gmail.com"));
    }

    #[test]
    fn meta_phones_are_digits_with_the_country_code_and_no_plus_or_leading_zeros() {
        for (input, digits) in [
            ("+1 (616) 954-7888", "16169547888"),
            ("+44 20 7946 0958", "442079460958"),
            // The international prefix and the UK trunk zero are leading zeros too.
            ("0044 20 7946 0958", "442079460958"),
            ("+44 (0)20 7946 0958", "442079460958"),
        ] {
            assert_eq!(normalized(Normalization::PhoneDigits, input).unwrap(), digits, "{input:?}");
        }
        assert_eq!(
            prepare(&meta("ph"), "+1 (616) 954-7888").unwrap(),
            "bb2fa2e6d2cea4746530c99686d0c7886ab2019875dca2d7e9e171c0e6ada00d"
        );
        assert_eq!(
            prepare(&meta("ph"), "+44 20 7946 0958").unwrap(),
            "35e206e5dec4c89b9e8b71b8c32724a5bb518483ac5a20c6617d738375b3b823"
        );
    }

    #[test]
    fn google_and_tiktok_phones_keep_their_plus() {
        assert_eq!(normalized(Normalization::PhoneE164, "+16505550123").unwrap(), "+16505550123");
        assert_eq!(normalized(Normalization::PhoneE164, "+1 (650) 555-0123").unwrap(), "+16505550123");
        assert_eq!(
            prepare(&google("hashed_phone_number"), "+1 650-555-0123").unwrap(),
            "4feaaadc0ff47808bdc09d5ed71dadd9ac8d92aeac7a56972c58e697a61c69f0"
        );
        // TikTok's own example number.
        assert_eq!(
            prepare(&tiktok("phone"), "+1 (213) 373-4253").unwrap(),
            "9f7ec22d72092cd3c0b58726ed9c2d91b92e51a3f29837508fb2948bb22dd2fd"
        );
    }

    #[test]
    fn a_phone_without_its_country_code_is_dropped() {
        for normalization in [Normalization::PhoneDigits, Normalization::PhoneE164] {
            assert_eq!(normalized(normalization, "(650)555-1212"), None);
            assert_eq!(normalized(normalization, "call me"), None);
        }
    }

    #[test]
    fn names_lose_case_punctuation_and_extra_whitespace() {
        for (input, name) in [
            ("  MARY  ", "mary"),
            ("O'Brien-Smith", "obriensmith"),
            ("Mary   Ann", "mary ann"),
            ("Dr. John", "dr john"),
            ("\u{201C}Zoë\u{201D}", "zoë"),
        ] {
            assert_eq!(normalized(Normalization::Name, input).unwrap(), name, "{input:?}");
        }
        assert_eq!(normalized(Normalization::Name, "'-.'"), None);
    }

    #[test]
    fn googles_first_name_keeps_punctuation_but_not_extra_spaces() {
        assert_eq!(normalized(Normalization::FirstNameGoogle, "  Mary \t Ann ").unwrap(), "mary ann");
        assert_eq!(normalized(Normalization::FirstNameGoogle, "Jean-Luc").unwrap(), "jean-luc");
        assert_eq!(prepare(&google("address_info.hashed_first_name"), " Mary ").unwrap(), sha256_hex("mary"));
        // Google's last name, like Meta's names, has no punctuation.
        assert_eq!(prepare(&google("address_info.hashed_last_name"), "O'Brien").unwrap(), sha256_hex("obrien"));
    }

    #[test]
    fn genders_are_read_from_the_usual_words_and_never_guessed() {
        for input in ["f", "F", "female", " Female ", "WOMAN"] {
            assert_eq!(normalized(Normalization::Gender, input).as_deref(), Some("f"), "{input:?}");
        }
        for input in ["m", "M", "male", "Male", "man"] {
            assert_eq!(normalized(Normalization::Gender, input).as_deref(), Some("m"), "{input:?}");
        }
        for input in ["mujer", "x", "non-binary", "unknown", "fm"] {
            assert_eq!(normalized(Normalization::Gender, input), None, "{input:?}");
        }
        assert_eq!(
            prepare(&meta("ge"), "Female").unwrap(),
            "252f10c83610ebca1a059c0bae8255eba2f95be4d1d7bcfa89d7248a82d9f111"
        );
    }

    #[test]
    fn dates_become_yyyymmdd() {
        for input in [
            "1997-02-16",
            "19970216",
            "1997/02/16",
            "1997.02.16",
            " 1997-02-16 ",
            "1997-02-16T08:30:00Z",
            "1997-02-16T23:30:00-05:00",
            "1997-02-16 08:30",
        ] {
            assert_eq!(normalized(Normalization::DateYyyymmdd, input).as_deref(), Some("19970216"), "{input:?}");
        }
    }

    #[test]
    fn impossible_or_ambiguous_dates_are_dropped() {
        for input in [
            "1997-13-01",
            "1997-00-10",
            "1997-02-30",
            "1997-02-00",
            "1899-12-31",
            "2/16/1997",
            "16.02.1997",
            "1997-2-16",
            "1997-02/16",
            "yesterday",
            "１９９７-02-16",
        ] {
            assert_eq!(normalized(Normalization::DateYyyymmdd, input), None, "{input:?}");
        }
    }

    #[test]
    fn cities_lose_spaces_punctuation_and_case() {
        for (input, city) in [
            ("Paris", "paris"),
            ("New York", "newyork"),
            (" St. Louis ", "stlouis"),
            ("Winston-Salem", "winstonsalem"),
            ("São Paulo", "sãopaulo"),
        ] {
            assert_eq!(normalized(Normalization::City, input).unwrap(), city, "{input:?}");
        }
        assert_eq!(
            prepare(&meta("ct"), "New York").unwrap(),
            "350c754ba4d38897693aa077ef43072a859d23f613443133fecbbd90a3512ca5"
        );
    }

    #[test]
    fn us_states_become_their_lowercase_two_letter_code() {
        for (input, state) in [
            ("CA", "ca"),
            ("California", "ca"),
            (" az ", "az"),
            ("New York", "ny"),
            ("District of Columbia", "dc"),
            // Elsewhere, lowercase without spaces or punctuation.
            ("Bavaria", "bavaria"),
            ("Île-de-France", "îledefrance"),
        ] {
            assert_eq!(normalized(Normalization::State, input).unwrap(), state, "{input:?}");
        }
        assert_eq!(
            prepare(&meta("st"), "California").unwrap(),
            "6959097001d10501ac7d54c0bdb8db61420f658f2922cc26e46d536119a31126"
        );
    }

    #[test]
    fn postal_codes_lose_spaces_and_dashes_and_a_us_zip4_keeps_five_digits() {
        for (input, code) in [
            ("94035", "94035"),
            ("94025-1234", "94025"),
            ("94025 1234", "94025"),
            ("M1 1AE", "m11ae"),
            ("SW1A 1AA", "sw1a1aa"),
            ("75018", "75018"),
            ("1987", "1987"),
        ] {
            assert_eq!(normalized(Normalization::PostalCode, input).unwrap(), code, "{input:?}");
        }
        assert_eq!(
            prepare(&meta("zp"), "94025-1234").unwrap(),
            "b9a9cf3cd3723a2e91b7c23ecf68456e872b6e5d86e5cab7f3d45a7302da32c7"
        );
        assert_eq!(
            prepare(&meta("zp"), "M1 1AE").unwrap(),
            "1dc694c2070e697769fb959b50671d76cafd430d8ca191fbdd0affcaea344ac5"
        );
    }

    #[test]
    fn countries_become_alpha_2_lowercase_for_meta_and_uppercase_for_google() {
        for (input, code) in
            [("United States", "us"), ("US", "us"), ("gb", "gb"), ("United Kingdom", "gb"), ("DEU", "de")]
        {
            assert_eq!(normalized(Normalization::Country, input).unwrap(), code, "{input:?}");
        }
        assert_eq!(prepare(&google("address_info.country_code"), " united states ").unwrap(), "US");
        assert_eq!(normalized(Normalization::Country, "Atlantis"), None);
        assert_eq!(normalized(Normalization::CountryUppercase, "Atlantis"), None);
    }

    #[test]
    fn google_address_fields_in_clear_are_only_trimmed() {
        assert_eq!(prepare(&google("address_info.city"), " Mountain View ").unwrap(), "Mountain View");
        assert_eq!(prepare(&google("address_info.state"), "CA").unwrap(), "CA");
        assert_eq!(prepare(&google("address_info.postal_code"), " 94043 ").unwrap(), "94043");
        assert_eq!(
            prepare(&google("address_info.hashed_street_address"), " 1600 Amphitheatre Pkwy ").unwrap(),
            sha256_hex("1600 amphitheatre pkwy")
        );
    }

    #[test]
    fn a_hashed_value_is_not_hashed_twice() {
        let spec = meta("em");
        let once = prepare(&spec, "ann@example.com").unwrap();
        assert_eq!(prepare(&spec, &once).unwrap(), once);
        assert_eq!(prepare(&spec, &format!(" {} ", once.to_uppercase())).unwrap(), once);
        // Whatever the field's normalization: a digest is not a phone, yet it passes.
        let digest = "E323EC626319CA94EE8BFF2E4C87CF613BE6EA19919ED1364124E16807AB3176";
        assert_eq!(prepare(&meta("ph"), digest).unwrap(), digest.to_ascii_lowercase());
        assert_eq!(prepare(&tiktok("phone"), digest).unwrap(), digest.to_ascii_lowercase());
    }

    #[test]
    fn empty_or_whitespace_values_are_dropped() {
        for normalization in Normalization::ALL {
            for raw in ["", " ", " \t\n "] {
                assert_eq!(normalize(normalization, raw), None, "{normalization:?} {raw:?}");
                for hashing in [Hashing::None, Hashing::Sha256] {
                    let spec = spec("x", IdentifierSource::Email, normalization, hashing);
                    assert_eq!(prepare(&spec, raw), None, "{normalization:?} {hashing:?} {raw:?}");
                }
            }
        }
    }

    #[test]
    fn every_personal_identifier_leaves_for_an_ad_platform_hashed() {
        for (platform, identifiers) in
            [("meta", meta_identifiers()), ("google_ads", google_ads_identifiers()), ("tiktok", tiktok_identifiers())]
        {
            for spec in identifiers.iter().filter(|spec| spec.source.is_personal()) {
                assert_eq!(spec.hashing, Hashing::Sha256, "{platform}: {}", spec.name);
            }
            let description = Description {
                name: platform.to_owned(),
                category: Category::AdPlatform,
                identifiers,
                max_batch_size: 1,
                rate_limit_per_second: None,
            };
            assert_eq!(description.validate(), Ok(()), "{platform}");
        }
    }

    #[test]
    fn each_platform_table_names_its_fields_and_hashes_them_as_documented() {
        let hashed = |identifiers: Vec<IdentifierSpec>| -> Vec<(String, bool)> {
            identifiers.into_iter().map(|spec| (spec.name, spec.hashing == Hashing::Sha256)).collect()
        };
        let expect = |fields: &[(&str, bool)]| -> Vec<(String, bool)> {
            fields.iter().map(|(name, hashed)| ((*name).to_owned(), *hashed)).collect()
        };
        assert_eq!(
            hashed(meta_identifiers()),
            expect(&[
                ("em", true),
                ("ph", true),
                ("fn", true),
                ("ln", true),
                ("ge", true),
                ("db", true),
                ("ct", true),
                ("st", true),
                ("zp", true),
                ("country", true),
                ("external_id", true),
                ("client_ip_address", false),
                ("client_user_agent", false),
                ("fbc", false),
                ("fbp", false),
            ])
        );
        assert_eq!(
            hashed(google_ads_identifiers()),
            expect(&[
                ("hashed_email", true),
                ("hashed_phone_number", true),
                ("address_info.hashed_first_name", true),
                ("address_info.hashed_last_name", true),
                ("address_info.hashed_street_address", true),
                ("address_info.city", false),
                ("address_info.state", false),
                ("address_info.country_code", false),
                ("address_info.postal_code", false),
                ("gclid", false),
                ("gbraid", false),
                ("wbraid", false),
            ])
        );
        assert_eq!(
            hashed(tiktok_identifiers()),
            expect(&[
                ("email", true),
                ("phone", true),
                ("external_id", true),
                ("ip", false),
                ("user_agent", false),
                ("ttclid", false),
            ])
        );
    }

    #[test]
    fn network_and_click_ids_are_sent_as_they_are() {
        let user_agent = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36";
        assert_eq!(prepare(&meta("client_user_agent"), user_agent).unwrap(), user_agent);
        assert_eq!(prepare(&meta("client_ip_address"), " 168.212.226.204 ").unwrap(), "168.212.226.204");
        let fbc = "fb.1.1554763741205.AbCdEfGhIjKlMnOpQrStUvWxYz1234567890";
        assert_eq!(prepare(&meta("fbc"), fbc).unwrap(), fbc);
        assert_eq!(prepare(&tiktok("ttclid"), "E.C.P.abc").unwrap(), "E.C.P.abc");
    }

    fn any_normalization() -> impl Strategy<Value = Normalization> {
        prop::sample::select(Normalization::ALL.to_vec())
    }

    fn any_raw_value() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,40}",
            "[ \\t]{0,2}[A-Za-z0-9.@_+'-]{0,24}[ \\t]{0,2}",
            "\\+?[0-9 ()-]{0,20}",
            "[0-9]{4}[-/.]?[0-9]{2}[-/.]?[0-9]{2}(T[0-9:]{0,8}Z?)?",
            "[0-9a-fA-F]{62,66}",
        ]
    }

    proptest! {
        #[test]
        fn a_sha256_spec_yields_64_lowercase_hex_digits_or_nothing(
            normalization in any_normalization(),
            raw in any_raw_value(),
        ) {
            let spec = spec("x", IdentifierSource::Email, normalization, Hashing::Sha256);
            if let Some(hashed) = prepare(&spec, &raw) {
                prop_assert_eq!(hashed.len(), 64);
                prop_assert!(hashed.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{}", hashed);
            }
        }

        #[test]
        fn normalizing_a_normalized_value_gives_it_back(
            // Meta's phone digits carry no `+`, so they cannot be read again
            // as a number with its country code.
            normalization in prop::sample::select(
                Normalization::ALL.into_iter().filter(|n| *n != Normalization::PhoneDigits).collect::<Vec<_>>(),
            ),
            raw in any_raw_value(),
        ) {
            if let Some(once) = normalize(normalization, &raw) {
                prop_assert_eq!(normalize(normalization, &once), Some(once.clone()));
            }
        }
    }
}
