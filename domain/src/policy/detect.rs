//! Detectors: what a key's name or a value's shape says about a field.
//!
//! Two independent signals, both conservative (a false positive removes a
//! harmless field; a false negative leaks one):
//!
//! * [`classify_key`] reads a key's *name*, after the HIPAA Safe Harbor list
//!   of identifiers (45 CFR 164.514(b)(2)), health and financial terms.
//! * [`classify_value`] reads a value's *shape*: emails, phone numbers, SSNs,
//!   card numbers (Luhn), IBANs (mod 97), URLs, IP addresses, full dates and
//!   long digit runs.
//!
//! Neither looks at anything but its argument: where a field sits in a
//! message is [`super::classify`]'s business.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::OnceLock;

use super::Classification;

/// What a key's name says its value is, if anything sensitive.
///
/// The name is split into lowercase words at separators (`_`, `-`, `.`,
/// spaces), camelCase humps, acronym ends (`IPAddress`) and letter/digit
/// changes; digit-only words are dropped (`address_line1`, `icd10`). The key
/// matches an entry of the list when its words end with the entry's words
/// (`patientEmail`, `home_phone`), optionally followed by one generic word
/// (`number`, `no`, `code`, `text`, …: `phone_number`, `zip_code`,
/// `diagnosis_code`). Matching whole words keeps short entries honest: `ip`
/// matches `ip`, `client_ip` and `ipAddress` but not `zip`, `tip` or
/// `shipping`; `age` matches `patient_age` but not `page`, `message` or
/// `usage`. The longest matching entry wins, so `email_address` is an
/// identifier rather than a location and `bank_account_number` is financial.
///
/// A few words name a person's detail only on their own: `name` (but not
/// `product_name`), `card` (but not `gift_card`), `provider` and `condition`
/// (but not `payment_provider` or `item_condition`); longer entries cover the
/// sensitive compounds (`first_name`, `credit_card`, `health_provider`).
pub fn classify_key(key: &str) -> Option<Classification> {
    // Messages repeat the same few dozen keys: each is read once per thread.
    thread_local! {
        static SEEN: RefCell<HashMap<String, Option<Classification>>> = RefCell::new(HashMap::new());
    }
    if let Some(found) = SEEN.with(|seen| seen.borrow().get(key).copied()) {
        return found;
    }
    let found = classify_key_words(&words(key));
    SEEN.with(|seen| {
        let mut seen = seen.borrow_mut();
        // Bounded: keys chosen by clients could otherwise grow it forever.
        if seen.len() >= MAX_REMEMBERED_KEYS {
            seen.clear();
        }
        seen.insert(key.to_owned(), found);
    });
    found
}

/// How many keys [`classify_key`] remembers per thread.
const MAX_REMEMBERED_KEYS: usize = 4_096;

/// One entry of [`KEY_NAMES`], split into words.
struct KeyEntry {
    words: Vec<&'static str>,
    whole_key_only: bool,
    class: Classification,
}

/// [`KEY_NAMES`] by the last word of each entry: a key can only match an
/// entry ending in its own last word (or, before a generic suffix, in the
/// word before it).
fn entries_by_last_word() -> &'static HashMap<&'static str, Vec<KeyEntry>> {
    static INDEX: OnceLock<HashMap<&'static str, Vec<KeyEntry>>> = OnceLock::new();
    INDEX.get_or_init(|| {
        let mut index: HashMap<&'static str, Vec<KeyEntry>> = HashMap::new();
        for &(entry, class) in KEY_NAMES {
            let (entry, whole_key_only) = match entry.strip_prefix('=') {
                Some(entry) => (entry, true),
                None => (entry, false),
            };
            let words: Vec<&'static str> = entry.split(' ').collect();
            let last = *words.last().expect("split gives at least one word");
            index.entry(last).or_default().push(KeyEntry { words, whole_key_only, class });
        }
        index
    })
}

fn classify_key_words(words: &[String]) -> Option<Classification> {
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let index = entries_by_last_word();
    let (last, rest) = words.split_last()?;
    let before_suffix = rest.last().filter(|_| GENERIC_SUFFIXES.contains(last));
    let candidates = [Some(last), before_suffix].into_iter().flatten().filter_map(|word| index.get(word)).flatten();
    let mut best: Option<(usize, Classification)> = None;
    for entry in candidates {
        let matches = if entry.whole_key_only {
            words == entry.words
        } else {
            words.ends_with(&entry.words) || (GENERIC_SUFFIXES.contains(last) && rest.ends_with(&entry.words))
        };
        if matches && best.is_none_or(|(length, _)| entry.words.len() > length) {
            best = Some((entry.words.len(), entry.class));
        }
    }
    best.map(|(_, class)| class)
}

/// What a string value's shape says it is, if anything sensitive.
///
/// In order: a URL (`http://`, `https://`, `www.`) is [`Classification::Url`];
/// an email address, a US SSN (`123-45-6789`), a full date (`YYYY-MM-DD`,
/// `MM/DD/YYYY`, `DD.MM.YYYY`, RFC 3339 and ISO date-times: any date but a
/// year is a Safe Harbor identifier) and a phone number (`+` and 8–15 digits,
/// or `555-123-4567`, `(555) 123-4567`, `555.123.4567`, `1 555 123 4567`)
/// are [`Classification::Identifier`]; an IPv4 or IPv6 address is
/// [`Classification::Device`]; a card number (13–19 digits, spaces or dashes
/// allowed, passing the Luhn check), an IBAN (passing mod 97) and a run of
/// 10–17 plain digits are [`Classification::Financial`].
///
/// Bank account numbers have no checksum, so a shape alone cannot tell them
/// from order numbers: a run of 10–17 digits is taken to be one (too long
/// for a quantity or a price, the usual length of account numbers), and a
/// shorter run counts only when its key says it is an account
/// ([`classify_key`] on `account_number`, `bank_account`). UUIDs and hex ids
/// (message and event ids) match nothing.
pub fn classify_value(value: &str) -> Option<Classification> {
    Shape::of_str(value).map(Shape::classification)
}

/// A sensitive value shape, finer than its [`Classification`] so a scrub's
/// reason can say what was found (`card number by its value`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    Url,
    Email,
    IpAddress,
    Ssn,
    Date,
    CardNumber,
    Iban,
    Phone,
    BankAccount,
}

impl Shape {
    /// The shape of a string value.
    pub(crate) fn of_str(value: &str) -> Option<Shape> {
        let value = value.trim();
        if value.is_empty() {
            None
        } else if is_url(value) {
            Some(Shape::Url)
        } else if is_email(value) {
            Some(Shape::Email)
        } else if value.parse::<IpAddr>().is_ok() {
            Some(Shape::IpAddress)
        } else if is_ssn(value) {
            Some(Shape::Ssn)
        } else if is_date(value) {
            Some(Shape::Date)
        } else if is_card_number(value) {
            Some(Shape::CardNumber)
        } else if is_iban(value) {
            Some(Shape::Iban)
        } else if is_phone(value) {
            Some(Shape::Phone)
        } else if value.bytes().all(|b| b.is_ascii_digit()) && (10..=17).contains(&value.len()) {
            Some(Shape::BankAccount)
        } else {
            None
        }
    }

    /// The shape of a JSON number: only a 13–19 digit integer passing the
    /// Luhn check (a card number stored as a number) counts.
    pub(crate) fn of_number(number: &serde_json::Number) -> Option<Shape> {
        let digits = number.as_u64()?.to_string();
        ((13..=19).contains(&digits.len()) && luhn(&digits)).then_some(Shape::CardNumber)
    }

    /// The classification of a value of this shape.
    pub(crate) fn classification(self) -> Classification {
        match self {
            Shape::Url => Classification::Url,
            Shape::Email | Shape::Ssn | Shape::Date | Shape::Phone => Classification::Identifier,
            Shape::IpAddress => Classification::Device,
            Shape::CardNumber | Shape::Iban | Shape::BankAccount => Classification::Financial,
        }
    }

    /// What the shape is, in words, for a scrub's reason.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Shape::Url => "url",
            Shape::Email => "email address",
            Shape::IpAddress => "ip address",
            Shape::Ssn => "social security number",
            Shape::Date => "date",
            Shape::CardNumber => "card number",
            Shape::Iban => "iban",
            Shape::Phone => "phone number",
            Shape::BankAccount => "bank account number",
        }
    }
}

/// The lowercase words of a key (see [`classify_key`]).
pub(crate) fn words(key: &str) -> Vec<String> {
    let chars: Vec<char> = key.chars().collect();
    let mut words = Vec::new();
    let mut current = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            words.push(std::mem::take(&mut current));
            continue;
        }
        if let Some(&previous) = i.checked_sub(1).and_then(|j| chars.get(j)) {
            let hump = previous.is_lowercase() && c.is_uppercase();
            let digits = previous.is_alphanumeric() && previous.is_numeric() != c.is_numeric();
            let acronym_end =
                previous.is_uppercase() && c.is_uppercase() && chars.get(i + 1).is_some_and(|next| next.is_lowercase());
            if hump || digits || acronym_end {
                words.push(std::mem::take(&mut current));
            }
        }
        current.extend(c.to_lowercase());
    }
    words.push(current);
    words.retain(|word| !word.is_empty() && !word.chars().all(char::is_numeric));
    words
}

/// Words that may follow an entry without changing what it names
/// (`phone_number`, `zip_code`, `diagnosis_codes`, `notes_text`).
const GENERIC_SUFFIXES: &[&str] = &["number", "num", "no", "nr", "code", "codes", "text", "txt"];

/// Key names by what they reveal. Entries are lowercase words separated by
/// one space; a leading `=` means the entry matches only the whole key.
const KEY_NAMES: &[(&str, Classification)] = {
    use Classification::*;
    &[
        // Names.
        ("=name", Identifier),
        ("=names", Identifier),
        ("first name", Identifier),
        ("firstname", Identifier),
        ("last name", Identifier),
        ("lastname", Identifier),
        ("full name", Identifier),
        ("fullname", Identifier),
        ("middle name", Identifier),
        ("middlename", Identifier),
        ("maiden name", Identifier),
        ("given name", Identifier),
        ("family name", Identifier),
        ("surname", Identifier),
        ("patient name", Identifier),
        ("customer name", Identifier),
        ("contact name", Identifier),
        ("member name", Identifier),
        ("display name", Identifier),
        ("user name", Identifier),
        ("username", Identifier),
        ("billing name", Identifier),
        ("shipping name", Identifier),
        ("recipient name", Identifier),
        ("holder name", Identifier),
        ("cardholder", Identifier),
        ("parent name", Identifier),
        ("guardian name", Identifier),
        ("spouse name", Identifier),
        ("emergency contact", Identifier),
        // Contact details.
        ("email", Identifier),
        ("emails", Identifier),
        ("e mail", Identifier),
        ("email address", Identifier),
        ("emailaddress", Identifier),
        ("phone", Identifier),
        ("phones", Identifier),
        ("phonenumber", Identifier),
        ("telephone", Identifier),
        ("tel", Identifier),
        ("=mobile", Identifier),
        ("mobile number", Identifier),
        ("mobile phone", Identifier),
        ("cell phone", Identifier),
        ("fax", Identifier),
        // Government, medical and insurance numbers.
        ("ssn", Identifier),
        ("social security", Identifier),
        ("social security number", Identifier),
        ("national id", Identifier),
        ("passport", Identifier),
        ("tax id", Identifier),
        ("mrn", Identifier),
        ("medical record", Identifier),
        ("medical record number", Identifier),
        ("patient id", Identifier),
        ("health plan", Identifier),
        ("health plan id", Identifier),
        ("member id", Identifier),
        ("beneficiary", Identifier),
        ("beneficiary id", Identifier),
        ("insurance id", Identifier),
        ("subscriber id", Identifier),
        ("policy number", Identifier),
        ("account number", Identifier),
        ("=certificate", Identifier),
        ("certificate number", Identifier),
        ("license number", Identifier),
        ("licence number", Identifier),
        ("driver license", Identifier),
        ("drivers license", Identifier),
        ("driver licence", Identifier),
        ("driving licence", Identifier),
        ("vehicle id", Identifier),
        ("vehicle identification number", Identifier),
        ("vin", Identifier),
        ("license plate", Identifier),
        ("licence plate", Identifier),
        ("plate number", Identifier),
        // Biometrics and photos.
        ("biometric", Identifier),
        ("biometrics", Identifier),
        ("fingerprint", Identifier),
        ("face", Identifier),
        ("faceprint", Identifier),
        ("voiceprint", Identifier),
        ("retina", Identifier),
        ("=photo", Identifier),
        ("=image", Identifier),
        ("=picture", Identifier),
        ("profile photo", Identifier),
        ("profile picture", Identifier),
        ("profile image", Identifier),
        ("avatar", Identifier),
        ("selfie", Identifier),
        ("headshot", Identifier),
        // Dates of birth.
        ("date of birth", Identifier),
        ("dateofbirth", Identifier),
        ("dob", Identifier),
        ("birthday", Identifier),
        ("birth date", Identifier),
        ("birthdate", Identifier),
        // Devices and network.
        ("device id", Device),
        ("deviceid", Device),
        ("=serial", Device),
        ("serial number", Device),
        ("udid", Device),
        ("idfa", Device),
        ("idfv", Device),
        ("gaid", Device),
        ("aaid", Device),
        ("advertising id", Device),
        ("android id", Device),
        ("imei", Device),
        ("mac address", Device),
        ("ip", Device),
        ("ip address", Device),
        ("ipaddress", Device),
        ("user agent", Device),
        ("useragent", Device),
        // Places.
        ("address", Location),
        ("addresses", Location),
        ("address line", Location),
        ("street", Location),
        ("city", Location),
        ("town", Location),
        ("zip", Location),
        ("zipcode", Location),
        ("postal code", Location),
        ("postalcode", Location),
        ("postcode", Location),
        ("post code", Location),
        ("county", Location),
        ("latitude", Location),
        ("longitude", Location),
        ("lat", Location),
        ("lng", Location),
        ("lon", Location),
        ("geo", Location),
        ("geolocation", Location),
        ("location", Location),
        ("coordinates", Location),
        ("gps", Location),
        // Links.
        ("url", Url),
        ("urls", Url),
        ("uri", Url),
        ("link", Url),
        ("href", Url),
        ("referrer", Url),
        ("referer", Url),
        ("path", Url),
        // Health.
        ("diagnosis", Phi),
        ("diagnoses", Phi),
        ("=condition", Phi),
        ("=conditions", Phi),
        ("medical condition", Phi),
        ("health condition", Phi),
        ("chronic condition", Phi),
        ("symptom", Phi),
        ("symptoms", Phi),
        ("medication", Phi),
        ("medications", Phi),
        ("prescription", Phi),
        ("prescriptions", Phi),
        ("rx", Phi),
        ("drug", Phi),
        ("drugs", Phi),
        ("drug name", Phi),
        ("medication name", Phi),
        ("treatment", Phi),
        ("treatments", Phi),
        ("therapy", Phi),
        ("=procedure", Phi),
        ("=procedures", Phi),
        ("medical procedure", Phi),
        ("icd", Phi),
        ("cpt", Phi),
        ("allergy", Phi),
        ("allergies", Phi),
        ("lab result", Phi),
        ("lab results", Phi),
        ("test result", Phi),
        ("test results", Phi),
        ("disease", Phi),
        ("illness", Phi),
        ("pregnancy", Phi),
        ("pregnant", Phi),
        ("mental health", Phi),
        ("appointment reason", Phi),
        ("visit reason", Phi),
        ("reason for visit", Phi),
        ("clinical notes", Phi),
        ("=provider", Phi),
        ("health provider", Phi),
        ("healthcare provider", Phi),
        ("care provider", Phi),
        ("medical provider", Phi),
        ("provider name", Phi),
        ("doctor", Phi),
        ("doctor name", Phi),
        ("physician", Phi),
        ("physician name", Phi),
        ("specialty", Phi),
        ("speciality", Phi),
        ("dosage", Phi),
        ("dose", Phi),
        ("blood type", Phi),
        ("blood pressure", Phi),
        // Money.
        ("=card", Financial),
        ("card number", Financial),
        ("cardnumber", Financial),
        ("credit card", Financial),
        ("creditcard", Financial),
        ("debit card", Financial),
        ("payment card", Financial),
        ("pan", Financial),
        ("cvv", Financial),
        ("cvc", Financial),
        ("security code", Financial),
        ("card expiry", Financial),
        ("iban", Financial),
        ("routing number", Financial),
        ("aba", Financial),
        ("sort code", Financial),
        ("bank account", Financial),
        ("bank account number", Financial),
        ("swift", Financial),
        ("bic", Financial),
        ("=balance", Financial),
        ("account balance", Financial),
        ("bank balance", Financial),
        ("credit score", Financial),
        ("fico", Financial),
        ("income", Financial),
        ("salary", Financial),
        ("loan", Financial),
        ("loan amount", Financial),
        ("net worth", Financial),
        ("debt", Financial),
        ("wallet address", Financial),
        ("seed phrase", Financial),
        ("recovery phrase", Financial),
        ("mnemonic", Financial),
        ("private key", Financial),
        // Free text.
        ("note", FreeText),
        ("notes", FreeText),
        ("comment", FreeText),
        ("comments", FreeText),
        ("message", FreeText),
        ("messages", FreeText),
        ("description", FreeText),
        ("details", FreeText),
        ("free text", FreeText),
        ("freetext", FreeText),
        ("feedback", FreeText),
        ("body", FreeText),
        ("subject", FreeText),
        ("reason", FreeText),
        ("search", FreeText),
        ("query", FreeText),
        ("=q", FreeText),
        ("search term", FreeText),
        ("keyword", FreeText),
        ("keywords", FreeText),
        ("title", FreeText),
        // Other sensitive categories.
        ("age", OtherSensitive),
        ("religion", OtherSensitive),
        ("ethnicity", OtherSensitive),
        ("=race", OtherSensitive),
        ("sexual orientation", OtherSensitive),
        ("sexuality", OtherSensitive),
        ("gender identity", OtherSensitive),
        ("political affiliation", OtherSensitive),
    ]
};

fn is_url(value: &str) -> bool {
    let lower = value.get(..8).unwrap_or(value).to_ascii_lowercase();
    (lower.starts_with("http://") || lower.starts_with("https://") || lower.starts_with("www."))
        && !value.chars().any(char::is_whitespace)
}

pub(crate) fn is_email(value: &str) -> bool {
    let Some((local, domain)) = value.split_once('@') else {
        return false;
    };
    let labels: Vec<&str> = domain.split('.').collect();
    !local.is_empty()
        && !value.chars().any(|c| c.is_whitespace() || c == '<' || c == '>')
        && !domain.contains('@')
        && labels.len() >= 2
        && labels.iter().all(|label| !label.is_empty())
        && labels.last().is_some_and(|tld| tld.len() >= 2 && tld.chars().all(char::is_alphabetic))
}

/// `123-45-6789` or `123 45 6789`.
fn is_ssn(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.len() == 11
        && (bytes[3] == b'-' || bytes[3] == b' ')
        && bytes[6] == bytes[3]
        && bytes.iter().enumerate().all(|(i, b)| i == 3 || i == 6 || b.is_ascii_digit())
}

fn is_date(value: &str) -> bool {
    use chrono::{DateTime, NaiveDate, NaiveDateTime};
    if !value.starts_with(|c: char| c.is_ascii_digit()) || value.len() < 8 {
        return false;
    }
    ["%Y-%m-%d", "%m/%d/%Y", "%d/%m/%Y", "%d.%m.%Y"]
        .iter()
        .any(|format| NaiveDate::parse_from_str(value, format).is_ok())
        || DateTime::parse_from_rfc3339(value).is_ok()
        || ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M"]
            .iter()
            .any(|format| NaiveDateTime::parse_from_str(value, format).is_ok())
}

/// 13–19 digits, spaces or dashes between them, passing the Luhn check.
fn is_card_number(value: &str) -> bool {
    if !value.chars().all(|c| c.is_ascii_digit() || c == ' ' || c == '-') {
        return false;
    }
    let digits: String = value.chars().filter(char::is_ascii_digit).collect();
    (13..=19).contains(&digits.len()) && luhn(&digits)
}

/// The Luhn check over a string of ASCII digits.
fn luhn(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let digit = u32::from(b - b'0');
            if i % 2 == 1 {
                let doubled = digit * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                digit
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Two letters, two check digits, up to 30 letters or digits (spaces allowed
/// between), whose mod 97 (ISO 13616) is 1.
fn is_iban(value: &str) -> bool {
    let compact: Vec<u8> = value.bytes().filter(|&b| b != b' ').map(|b| b.to_ascii_uppercase()).collect();
    if !(15..=34).contains(&compact.len())
        || !compact[..2].iter().all(u8::is_ascii_uppercase)
        || !compact[2..4].iter().all(u8::is_ascii_digit)
        || !compact.iter().all(u8::is_ascii_alphanumeric)
    {
        return false;
    }
    let rearranged = compact[4..].iter().chain(&compact[..4]);
    let remainder = rearranged.fold(0u32, |remainder, &b| {
        if b.is_ascii_digit() {
            (remainder * 10 + u32::from(b - b'0')) % 97
        } else {
            (remainder * 100 + u32::from(b - b'A' + 10)) % 97
        }
    });
    remainder == 1
}

/// `+` and 8–15 digits (E.164, separators allowed), or a North American
/// number written with separators: `555-123-4567`, `(555) 123-4567`,
/// `555.123.4567`, `1 555 123 4567`.
fn is_phone(value: &str) -> bool {
    let separator = |c: char| matches!(c, ' ' | '-' | '.' | '(' | ')');
    if !value.chars().all(|c| c.is_ascii_digit() || separator(c) || c == '+') {
        return false;
    }
    let digits = value.chars().filter(char::is_ascii_digit).count();
    if let Some(rest) = value.strip_prefix('+') {
        return !rest.contains('+') && (8..=15).contains(&digits);
    }
    if value.contains('+') || !value.chars().any(separator) {
        return false;
    }
    let groups: Vec<&str> = value.split(separator).filter(|group| !group.is_empty()).collect();
    let lengths: Vec<usize> = groups.iter().map(|group| group.len()).collect();
    lengths == [3, 3, 4] || (lengths == [1, 3, 3, 4] && groups[0] == "1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use Classification::*;

    #[test]
    fn a_key_is_read_alike_in_camel_snake_kebab_and_spaced_case() {
        for key in ["firstName", "first_name", "First Name", "first-name", "FIRST_NAME", "firstname"] {
            assert_eq!(classify_key(key), Some(Identifier), "{key}");
        }
    }

    #[test]
    fn a_key_ending_in_a_sensitive_word_is_classified() {
        assert_eq!(classify_key("patientEmail"), Some(Identifier));
        assert_eq!(classify_key("home_phone"), Some(Identifier));
        assert_eq!(classify_key("phone_number"), Some(Identifier));
        assert_eq!(classify_key("client_ip"), Some(Device));
        assert_eq!(classify_key("ipAddress"), Some(Device));
        assert_eq!(classify_key("IPAddress"), Some(Device));
        assert_eq!(classify_key("shipping_zip_code"), Some(Location));
        assert_eq!(classify_key("ICD10Code"), Some(Phi));
        assert_eq!(classify_key("patient_age"), Some(OtherSensitive));
    }

    #[test]
    fn the_longest_matching_entry_wins() {
        assert_eq!(classify_key("email_address"), Some(Identifier));
        assert_eq!(classify_key("street_address"), Some(Location));
        assert_eq!(classify_key("bank_account_number"), Some(Financial));
        assert_eq!(classify_key("account_number"), Some(Identifier));
        assert_eq!(classify_key("appointment_reason"), Some(Phi));
        assert_eq!(classify_key("cancel_reason"), Some(FreeText));
    }

    #[test]
    fn short_words_match_only_whole_words() {
        for key in ["zip", "tip", "shipping", "skip", "recipe"] {
            assert_ne!(classify_key(key), Some(Device), "{key}");
        }
        for key in ["page", "message", "usage", "average", "storage", "pages"] {
            assert_ne!(classify_key(key), Some(OtherSensitive), "{key}");
        }
        assert_eq!(classify_key("company"), None);
        assert_eq!(classify_key("messageId"), None);
    }

    #[test]
    fn a_word_that_is_sensitive_only_on_its_own_does_not_match_inside_a_longer_key() {
        assert_eq!(classify_key("name"), Some(Identifier));
        assert_eq!(classify_key("product_name"), None);
        assert_eq!(classify_key("card"), Some(Financial));
        assert_eq!(classify_key("gift_card"), None);
        assert_eq!(classify_key("creditCardNumber"), Some(Financial));
        assert_eq!(classify_key("payment_provider"), None);
        assert_eq!(classify_key("provider"), Some(Phi));
        assert_eq!(classify_key("healthcare_provider"), Some(Phi));
        assert_eq!(classify_key("is_mobile"), None);
    }

    #[test]
    fn every_family_of_key_names_is_covered() {
        let cases = [
            ("ssn", Identifier),
            ("medicalRecordNumber", Identifier),
            ("member_id", Identifier),
            ("dob", Identifier),
            ("date_of_birth", Identifier),
            ("licensePlate", Identifier),
            ("fingerprint", Identifier),
            ("profile_photo", Identifier),
            ("device_id", Device),
            ("advertisingId", Device),
            ("userAgent", Device),
            ("address", Location),
            ("postal_code", Location),
            ("latitude", Location),
            ("url", Url),
            ("referrer", Url),
            ("diagnosis", Phi),
            ("medications", Phi),
            ("lab_result", Phi),
            ("mental_health", Phi),
            ("card_number", Financial),
            ("cvv", Financial),
            ("iban", Financial),
            ("routingNumber", Financial),
            ("credit_score", Financial),
            ("wallet_address", Financial),
            ("seed phrase", Financial),
            ("notes", FreeText),
            ("search_term", FreeText),
            ("title", FreeText),
            ("religion", OtherSensitive),
            ("sexualOrientation", OtherSensitive),
            ("gender_identity", OtherSensitive),
        ];
        for (key, class) in cases {
            assert_eq!(classify_key(key), Some(class), "{key}");
        }
    }

    #[test]
    fn innocuous_keys_are_not_classified() {
        for key in ["value", "currency", "revenue", "quantity", "plan", "x1", "sku", "category", "event", "type"] {
            assert_eq!(classify_key(key), None, "{key}");
        }
    }

    #[test]
    fn a_card_number_is_financial_only_when_it_passes_luhn() {
        assert_eq!(classify_value("4111 1111 1111 1111"), Some(Financial));
        assert_eq!(classify_value("4111-1111-1111-1111"), Some(Financial));
        assert_eq!(classify_value("4111111111111111"), Some(Financial));
        assert_eq!(classify_value("4111 1111 1111 1112"), None);
        assert_eq!(Shape::of_number(&4111111111111111u64.into()), Some(Shape::CardNumber));
        assert_eq!(Shape::of_number(&4111111111111112u64.into()), None);
        assert_eq!(Shape::of_number(&120u64.into()), None);
    }

    #[test]
    fn an_iban_is_financial_only_when_its_check_digits_hold() {
        assert_eq!(classify_value("GB82 WEST 1234 5698 7654 32"), Some(Financial));
        assert_eq!(classify_value("GB82WEST12345698765432"), Some(Financial));
        assert_eq!(classify_value("GB82 WEST 1234 5698 7654 33"), None);
        assert_eq!(classify_value("GB82"), None);
    }

    #[test]
    fn an_ssn_is_an_identifier() {
        assert_eq!(classify_value("123-45-6789"), Some(Identifier));
        assert_eq!(classify_value("123-456-789"), None);
        assert_eq!(classify_value("123-45-678"), None);
    }

    #[test]
    fn phone_numbers_in_common_forms_are_identifiers() {
        for phone in
            ["+14155550123", "+44 20 7946 0958", "(555) 123-4567", "555-123-4567", "555.123.4567", "1 555 123 4567"]
        {
            assert_eq!(classify_value(phone), Some(Identifier), "{phone}");
        }
        for not_phone in ["+1234", "12-34", "555-1234", "2024-01-05", "3.14", "123-45-6789"] {
            assert_ne!(Shape::of_str(not_phone), Some(Shape::Phone), "{not_phone}");
        }
    }

    #[test]
    fn an_email_address_is_an_identifier() {
        assert_eq!(classify_value("jane.doe@example.com"), Some(Identifier));
        assert_eq!(classify_value(" jane@example.co.uk "), Some(Identifier));
        assert_eq!(classify_value("@example.com"), None);
        assert_eq!(classify_value("jane@localhost"), None);
        assert_eq!(classify_value("jane at example.com"), None);
    }

    #[test]
    fn ip_addresses_are_device_data() {
        assert_eq!(classify_value("203.0.113.7"), Some(Device));
        assert_eq!(classify_value("2001:db8::1"), Some(Device));
        assert_eq!(classify_value("203.0.113"), None);
        assert_eq!(classify_value("4.1.0"), None);
    }

    #[test]
    fn full_dates_are_identifiers_but_a_year_is_not() {
        for date in ["1985-04-12", "04/12/1985", "12.04.1985", "2024-01-05T10:00:00Z", "2024-01-05T10:00:00.123+02:00"]
        {
            assert_eq!(classify_value(date), Some(Identifier), "{date}");
        }
        assert_eq!(classify_value("1985"), None);
        assert_eq!(classify_value("1985-13-45"), None);
    }

    #[test]
    fn urls_are_urls() {
        assert_eq!(classify_value("https://clinic.example.com/a?b=c"), Some(Url));
        assert_eq!(classify_value("HTTP://example.com"), Some(Url));
        assert_eq!(classify_value("www.example.com"), Some(Url));
        assert_eq!(classify_value("example.com"), None);
    }

    #[test]
    fn long_digit_runs_are_taken_for_bank_accounts_but_short_ones_are_not() {
        assert_eq!(classify_value("0123456789"), Some(Financial));
        assert_eq!(classify_value("12345678901234567"), Some(Financial));
        assert_eq!(classify_value("12345678"), None);
        assert_eq!(classify_value("123456789012345678901234"), None);
        assert_eq!(classify_value("120"), None);
    }

    #[test]
    fn ids_and_ordinary_words_are_not_classified() {
        for value in [
            "550e8400-e29b-41d4-a716-446655440000",
            "9f2c1e0a9f2c1e0a9f2c1e0a9f2c1e0a",
            "USD",
            "cardiology",
            "Type 2 diabetes",
            "",
            "en-US",
        ] {
            assert_eq!(classify_value(value), None, "{value}");
        }
    }
}
