//! Value types parsed once at the door. Each has a private field and a `parse` that explains,
//! in a sentence a county data clerk understands, why a value is not acceptable.

use std::fmt;

/// A 10-digit National Provider Identifier whose last digit is a valid Luhn check digit computed
/// with the `80840` health-industry prefix (45 CFR 162.406).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Npi(String);

impl Npi {
    /// Parses and verifies the check digit.
    pub fn parse(s: &str) -> Result<Npi, String> {
        let b = s.as_bytes();
        if b.len() != 10 || !b.iter().all(u8::is_ascii_digit) {
            return Err("an NPI has exactly 10 digits".into());
        }
        if !matches!(b[0], b'1' | b'2') {
            return Err("an NPI starts with 1 (individual) or 2 (organisation)".into());
        }
        // Luhn over "80840" + first nine digits; the prefix contributes a constant 24.
        let mut sum = 24u32;
        for (i, d) in b[..9].iter().rev().enumerate() {
            let mut v = u32::from(d - b'0');
            if i % 2 == 0 {
                v *= 2;
                if v > 9 {
                    v -= 9;
                }
            }
            sum += v;
        }
        let check = (10 - (sum % 10)) % 10;
        if u32::from(b[9] - b'0') != check {
            return Err(format!("the NPI check digit is wrong (expected {check} as the last digit); check for a typo"));
        }
        Ok(Npi(s.to_owned()))
    }

    /// The 10 digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An ICD-10-CM code, stored without the dot (`F411`), displayed with it (`F41.1`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Icd10(String);

impl Icd10 {
    /// Checks the shape of an ICD-10-CM code: a letter, a digit, an alphanumeric character, then
    /// up to four more alphanumerics after an optional dot. Whether the code exists in the code
    /// set is a mapping concern.
    pub fn parse(s: &str) -> Result<Icd10, String> {
        let upper = s.trim().to_ascii_uppercase();
        let compact: String = match upper.split_once('.') {
            Some((head, tail)) if head.len() == 3 && !tail.is_empty() => format!("{head}{tail}"),
            Some(_) => return Err("not an ICD-10-CM code: the dot comes after the third character, as in F41.1".into()),
            None => upper,
        };
        let b = compact.as_bytes();
        let shape_ok = (3..=7).contains(&b.len())
            && b[0].is_ascii_uppercase()
            && b[0] != b'U'
            && b[1].is_ascii_digit()
            && b[2..].iter().all(u8::is_ascii_alphanumeric);
        if !shape_ok {
            return Err("not an ICD-10-CM code: expected a letter, a digit and 1 to 5 more letters or digits, like F41.1 or Z63.8".into());
        }
        Ok(Icd10(compact))
    }

    /// Without the dot, as X12 HI segments carry it.
    pub fn compact(&self) -> &str {
        &self.0
    }

    /// With the dot, as FHIR `http://hl7.org/fhir/sid/icd-10-cm` codes carry it.
    pub fn dotted(&self) -> String {
        if self.0.len() > 3 { format!("{}.{}", &self.0[..3], &self.0[3..]) } else { self.0.clone() }
    }
}

impl fmt::Display for Icd10 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.dotted())
    }
}

/// A Medi-Cal Client Index Number: eight digits and a check letter (`91234567A`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MediCalCin(String);

impl MediCalCin {
    /// Checks the shape.
    pub fn parse(s: &str) -> Result<MediCalCin, String> {
        let b = s.as_bytes();
        if b.len() == 9 && b[..8].iter().all(u8::is_ascii_digit) && b[8].is_ascii_alphabetic() {
            Ok(MediCalCin(s.to_ascii_uppercase()))
        } else {
            Err("a Medi-Cal CIN is 8 digits followed by a letter, like 91234567A (not the 14-character BIC id)".into())
        }
    }

    /// The nine characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An amount of money in integer cents (never a float). Parsed from and shown as a decimal with
/// at most two fraction digits (`66.24`, `-5.5`, `120`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Cents(pub i64);

impl Cents {
    /// Zero.
    pub const ZERO: Cents = Cents(0);

    /// Parses `123`, `123.4`, `123.45` or `-0.50`; more than two fraction digits is an error.
    pub fn parse(s: &str) -> Result<Cents, String> {
        let t = s.trim();
        let (neg, digits) = match t.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let ok = !whole.is_empty()
            && whole.len() <= 15
            && whole.bytes().all(|b| b.is_ascii_digit())
            && frac.len() <= 2
            && frac.bytes().all(|b| b.is_ascii_digit())
            && !(digits.contains('.') && frac.is_empty());
        if !ok {
            return Err(format!("`{s}` is not an amount: expected dollars with at most two decimals, like 66.24"));
        }
        let mut cents: i64 = 0;
        for b in whole.bytes() {
            cents = cents * 10 + i64::from(b - b'0');
        }
        let mut f = 0i64;
        for (i, b) in frac.bytes().enumerate() {
            f += i64::from(b - b'0') * if i == 0 { 10 } else { 1 };
        }
        let v = cents * 100 + f;
        Ok(Cents(if neg { -v } else { v }))
    }

    /// Multiplied by a count (units), `None` on overflow.
    pub fn times(self, n: u32) -> Option<Cents> {
        self.0.checked_mul(i64::from(n)).map(Cents)
    }
}

impl fmt::Display for Cents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let a = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", a / 100, a % 100)
    }
}

impl std::ops::Add for Cents {
    type Output = Cents;
    fn add(self, o: Cents) -> Cents {
        Cents(self.0.saturating_add(o.0))
    }
}

impl std::iter::Sum for Cents {
    fn sum<I: Iterator<Item = Cents>>(iter: I) -> Cents {
        iter.fold(Cents::ZERO, |a, b| a + b)
    }
}

/// CALPADS Statewide Student Identifier: ten digits.
pub fn check_ssid(s: &str) -> Result<(), String> {
    if s.len() == 10 && s.bytes().all(|b| b.is_ascii_digit()) { Ok(()) } else { Err("a CALPADS SSID has exactly 10 digits".into()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npi_check_digit() {
        // CMS's published example NPI.
        assert!(Npi::parse("1234567893").is_ok());
        assert!(Npi::parse("1234567890").unwrap_err().contains("check digit"));
        assert!(Npi::parse("123456789").is_err());
        assert!(Npi::parse("12345678a3").is_err());
        assert!(Npi::parse("3234567893").is_err());
        assert!(Npi::parse("1245319599").is_ok());
    }

    #[test]
    fn icd10_shapes() {
        for ok in ["F41.1", "F411", "Z63.8", "F32.A", "F43.10", "R45.851", "f90.0", "F91"] {
            assert!(Icd10::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["41.1", "F4", "F41.", "U07.1", "F4.11", "F41.12345", "F41-1", ""] {
            assert!(Icd10::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Icd10::parse("F43.10").unwrap().compact(), "F4310");
        assert_eq!(Icd10::parse("F4310").unwrap().dotted(), "F43.10");
    }

    #[test]
    fn cents_parse_and_show() -> Result<(), String> {
        assert_eq!(Cents::parse("66.24")?, Cents(6624));
        assert_eq!(Cents::parse("120")?, Cents(12000));
        assert_eq!(Cents::parse("0.5")?, Cents(50));
        assert_eq!(Cents::parse("-5.05")?, Cents(-505));
        for bad in ["", "1.234", "1.", ".5", "abc", "1e3", "--1", "1,00"] {
            assert!(Cents::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Cents(6624).to_string(), "66.24");
        assert_eq!(Cents(-505).to_string(), "-5.05");
        assert_eq!(Cents(7).to_string(), "0.07");
        assert_eq!(Cents(4108).times(3), Some(Cents(12324)));
        Ok(())
    }

    #[test]
    fn cin_shape() {
        assert!(MediCalCin::parse("91234567A").is_ok());
        assert!(MediCalCin::parse("91234567").is_err());
        assert!(MediCalCin::parse("91234567A12345").is_err());
        assert!(MediCalCin::parse("9123456AA").is_err());
    }
}

/// Why a partner asks for data: the v3 PurposeOfUse codes a consent can name (DOMAIN.md 4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PurposeOfUse {
    /// Treatment (`TREAT`).
    Treat,
    /// Payment (`HPAYMT`).
    Payment,
    /// Health-care operations (`HOPERAT`).
    Operations,
}

impl PurposeOfUse {
    /// The code system of the codes below.
    pub const SYSTEM: &'static str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

    /// Every purpose.
    pub const ALL: [PurposeOfUse; 3] = [PurposeOfUse::Treat, PurposeOfUse::Payment, PurposeOfUse::Operations];

    /// The v3-ActReason code.
    pub fn code(self) -> &'static str {
        match self {
            PurposeOfUse::Treat => "TREAT",
            PurposeOfUse::Payment => "HPAYMT",
            PurposeOfUse::Operations => "HOPERAT",
        }
    }

    /// Parses a code, alone or as `system|code`.
    pub fn parse(s: &str) -> Result<PurposeOfUse, String> {
        let code = match s.split_once('|') {
            Some((system, code)) if system == Self::SYSTEM || system == "http://terminology.hl7.org/CodeSystem/v3-PurposeOfUse" => code,
            Some((system, _)) => return Err(format!("purpose of use system `{system}` is not v3-ActReason")),
            None => s,
        };
        Self::ALL
            .into_iter()
            .find(|p| p.code() == code)
            .ok_or_else(|| format!("purpose of use `{code}` is not one of TREAT, HPAYMT, HOPERAT"))
    }
}

impl fmt::Display for PurposeOfUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}
