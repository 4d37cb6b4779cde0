//! Diagnostics: what the parser and the validator say about a template.

use serde::Serialize;
use std::fmt;

/// How serious a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The template is usable; the user should still look.
    Warning,
    /// The template is rejected (the service would reject it too).
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

macro_rules! codes {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// A diagnostic code. AIB's own `provisioningErrorCode` names are used where AIB has
        /// one (`BadSourceType`, `NoCustomizerScript`, …); the others are aib's.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum Code { $( $(#[$doc])* $name, )* }

        impl Code {
            /// The code as printed (`BadSourceType`).
            pub fn as_str(&self) -> &'static str {
                match self { $( Code::$name => stringify!($name), )* }
            }
        }
    };
}

codes! {
    /// AIB: the source `type` is missing or unknown.
    BadSourceType,
    /// AIB: a `PlatformImage` source is incomplete or malformed.
    BadPIRSource,
    /// AIB: a `ManagedImage` source is malformed.
    BadManagedImageSource,
    /// AIB: a `SharedImageVersion` source is malformed.
    BadSharedImageVersionSource,
    /// AIB: a customizer `type` is missing or unknown.
    BadCustomizerType,
    /// AIB: a customizer type exists but is not allowed here.
    UnsupportedCustomizerType,
    /// AIB: a customizer has no script (or more than one).
    NoCustomizerScript,
    /// AIB: a validator `type` is missing or unknown.
    BadValidatorType,
    /// AIB: a validator type exists but is not allowed in `inVMValidations`.
    UnsupportedValidatorType,
    /// AIB: a validator has no script (or more than one).
    NoValidatorScript,
    /// AIB: a distributor `type` is missing or unknown.
    BadDistributeType,
    /// AIB: a `SharedImage` distributor is malformed.
    BadSharedImageDistribute,
    /// AIB: `stagingResourceGroup` is not a resource group id.
    BadStagingResourceGroup,
    /// The input is not JSON, or not a JSON object where one is needed.
    InvalidJson,
    /// Comments or trailing commas: ARM's template engine reads them, strict JSON does not.
    JsonExtension,
    /// A boolean or number written as a string, which lenient API versions coerce.
    StringScalar,
    /// The document holds no image template aib recognises.
    UnknownDocument,
    /// A field the API version does not define.
    UnknownField,
    /// A field is spelled with the wrong case.
    FieldCase,
    /// A field is newer than the document's `apiVersion`.
    FieldTooNew,
    /// A required field is missing.
    MissingField,
    /// A field has the wrong JSON type.
    WrongType,
    /// A field has a value outside its allowed set or syntax.
    InvalidValue,
    /// A number is out of its allowed range.
    OutOfRange,
    /// Two fields that exclude each other are both set, or one requires another.
    ConflictingFields,
    /// `runOutputName` does not match `^[A-Za-z0-9-_.]{1,64}$`.
    BadRunOutputName,
    /// Two distribute targets share a `runOutputName`.
    DuplicateRunOutputName,
    /// A `sha256Checksum` is not 64 hex characters.
    BadChecksum,
    /// An Azure resource id is malformed or names the wrong resource type.
    BadResourceId,
    /// A URI is malformed or uses an unsupported scheme.
    BadUri,
    /// The value would reach past the build VM (a host file, a host path, the host's
    /// network, the operator's credentials) and the operator's settings do not allow it.
    OutsideBoundary,
    /// `restartTimeout` is not a duration such as `5m` or `1h30m`.
    BadRestartTimeout,
    /// The template has no `distribute` target.
    NoDistributeTarget,
    /// The template identity is malformed.
    BadIdentity,
    /// The value is an ARM template expression, kept as an opaque value.
    ArmExpression,
    /// The value holds a placeholder such as `<region>` to be substituted before a build.
    Placeholder,
    /// A value that works but is not recommended.
    Discouraged,
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One finding about a template: where (a JSON path into the document), what (a code and a
/// message) and how to fix it (a hint).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// JSON path into the document, such as `properties.customize[2].inline`.
    pub path: String,
    /// The code; AIB's own where one exists.
    pub code: Code,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Diagnostic {
    /// An error at `path`.
    pub fn error(path: impl Into<String>, code: Code, message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Error, path: path.into(), code, message: message.into(), hint: None }
    }

    /// A warning at `path`.
    pub fn warning(path: impl Into<String>, code: Code, message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Warning, ..Diagnostic::error(path, code, message) }
    }

    /// Adds a hint.
    #[must_use]
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// True for [`Severity::Error`].
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    /// `PATH: CODE: message (hint)`, the form `aib validate` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() { "$" } else { &self.path };
        write!(f, "{path}: {}: {}", self.code, self.message)?;
        if self.severity == Severity::Warning {
            f.write_str(" [warning]")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " ({h})")?;
        }
        Ok(())
    }
}

/// The diagnostics of one document, with helpers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// True when any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }

    /// The errors only.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }

    /// The warnings only.
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| !d.is_error())
    }

    /// Adds one.
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    /// All diagnostics.
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}
