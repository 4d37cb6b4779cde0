//! Semantic checks after parsing: the rules AIB states beyond the JSON shape.

use super::armid::{self, IdShape};
use super::decode::{is_arm_expression, join, placeholder};
use super::diag::{Code, Diagnostic};
use super::model::*;
use std::collections::{BTreeSet, HashMap};

/// The `type` names a validator accepts in each list. Backends and plugins add theirs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeNames {
    /// `source.type`.
    pub sources: BTreeSet<String>,
    /// `customize[].type`.
    pub customizers: BTreeSet<String>,
    /// `validate.inVMValidations[].type`.
    pub validators: BTreeSet<String>,
    /// `distribute[].type`.
    pub distributors: BTreeSet<String>,
}

impl Default for TypeNames {
    /// AIB's own types.
    fn default() -> Self {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        use super::type_names as t;
        TypeNames {
            sources: set(&t::SOURCES),
            customizers: set(&t::CUSTOMIZERS),
            validators: set(&t::VALIDATORS),
            distributors: set(&t::DISTRIBUTORS),
        }
    }
}

/// `^[A-Za-z0-9-_.]{1,64}$`: template names and `runOutputName`; a name of dots only (`.`,
/// `..`) is refused too, as it names a directory wherever it becomes part of a path.
pub fn is_valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) && !s.bytes().all(|b| b == b'.')
}

/// True for 64 hex characters.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Parses a Go-style duration (`5m`, `1h30m`, `90s`, `1.5h`) as AIB's `restartTimeout` takes.
pub fn parse_go_duration(s: &str) -> Option<std::time::Duration> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * secs;
        rest = &rest[unit_len..];
    }
    (total.is_finite() && total < 1e9).then(|| std::time::Duration::from_secs_f64(total))
}

struct Checker<'a> {
    out: &'a mut Vec<Diagnostic>,
    types: &'a TypeNames,
}

impl Checker<'_> {
    fn error(&mut self, path: &str, code: Code, msg: impl Into<String>, hint: impl Into<String>) {
        self.out.push(Diagnostic::error(path, code, msg).with_hint(hint));
    }

    fn warn(&mut self, path: &str, code: Code, msg: impl Into<String>, hint: impl Into<String>) {
        self.out.push(Diagnostic::warning(path, code, msg).with_hint(hint));
    }

    /// Checks an ARM id unless it is an expression or a whole placeholder.
    fn arm_id(&mut self, path: &str, value: &str, code: Code, check: impl FnOnce(&str) -> Result<(), String>, example: &str) {
        if value.is_empty() || armid::opaque(value) {
            return;
        }
        if let Err(why) = check(value) {
            self.error(path, code, format!("`{value}` is not a valid resource id: {why}"), format!("use the form {example}"));
        }
    }

    fn id(&mut self, path: &str, value: &str, code: Code, shape: &IdShape) {
        self.arm_id(path, value, code, |v| armid::check(v, shape), shape.example);
    }

    fn checksum(&mut self, path: &str, sum: &Option<String>) {
        if let Some(s) = sum {
            if !s.is_empty() && !is_arm_expression(s) && !is_sha256_hex(s) {
                self.error(
                    path,
                    Code::BadChecksum,
                    format!("`{s}` is not a SHA-256 checksum (64 hex characters, {} given)", s.len()),
                    "compute it with `sha256sum FILE` (Linux) or `Get-FileHash FILE` (Windows)",
                );
            } else if s.bytes().any(|b| b.is_ascii_uppercase()) && !is_arm_expression(s) {
                self.warn(path, Code::BadChecksum, "checksums are lowercase hex", "lowercase the checksum");
            }
        }
    }

    fn uri(&mut self, path: &str, uri: &str, schemes: &[&str]) {
        if uri.is_empty() || is_arm_expression(uri) || placeholder(uri).is_some_and(|p| p.len() == uri.len()) {
            return;
        }
        let scheme = uri.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        let ok = scheme.as_deref().is_some_and(|s| schemes.contains(&s))
            && uri.split_once("://").is_some_and(|(_, rest)| !rest.is_empty() && !rest.contains(char::is_whitespace));
        if !ok {
            self.error(
                path,
                Code::BadUri,
                format!("`{uri}` is not a valid URI"),
                format!("use an absolute URI with scheme {}", schemes.join(", ")),
            );
        }
    }

    fn script(
        &mut self,
        path: &str,
        script_uri: &Option<String>,
        inline: &Option<Expr<Vec<String>>>,
        sum: &Option<String>,
        validator: bool,
    ) {
        let code = if validator { Code::NoValidatorScript } else { Code::NoCustomizerScript };
        let has_uri = script_uri.as_deref().is_some_and(|s| !s.is_empty());
        let has_inline = match inline {
            Some(Expr::Value(lines)) => !lines.is_empty(),
            Some(Expr::Expression(_)) => true,
            None => false,
        };
        match (has_uri, has_inline) {
            (true, true) => self.error(
                &join(path, "inline"),
                code,
                "both `scriptUri` and `inline` are set",
                "keep exactly one of `scriptUri` and `inline`",
            ),
            (false, false) => {
                let (p, m) = match inline {
                    Some(_) => (join(path, "inline"), "`inline` is empty"),
                    None => (path.to_string(), "neither `scriptUri` nor `inline` is set"),
                };
                self.error(&p, code, m, "set `scriptUri` to the script's URI, or `inline` to its lines");
            }
            _ => {}
        }
        if let Some(u) = script_uri {
            self.uri(&join(path, "scriptUri"), u, &["https", "http", "file"]);
        }
        self.checksum(&join(path, "sha256Checksum"), sum);
        if has_inline && sum.as_deref().is_some_and(|s| !s.is_empty()) && !has_uri {
            self.warn(
                &join(path, "sha256Checksum"),
                Code::Discouraged,
                "`sha256Checksum` has no effect with `inline`",
                "remove it, or use `scriptUri`",
            );
        }
    }

    fn file(&mut self, path: &str, f: &FileStep) {
        match f.source_uri.as_deref() {
            None | Some("") => {
                self.error(&join(path, "sourceUri"), Code::MissingField, "`sourceUri` is required", "set the URI of the file to copy")
            }
            Some(u) => self.uri(&join(path, "sourceUri"), u, &["https", "http", "file"]),
        }
        match f.destination.as_deref() {
            None | Some("") => self.error(
                &join(path, "destination"),
                Code::MissingField,
                "`destination` is required",
                "set the full path of the file on the VM, such as /tmp/app.tar.gz",
            ),
            Some(d) if !is_arm_expression(d) && placeholder(d).is_none() => {
                let b = d.as_bytes();
                let windows = b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && (b[2] == b'\\' || b[2] == b'/');
                if !d.starts_with('/') && !windows {
                    self.error(
                        &join(path, "destination"),
                        Code::InvalidValue,
                        format!("`{d}` is not an absolute path"),
                        "use a full path such as /tmp/file or C:\\file",
                    );
                } else if d.split(['/', '\\']).any(|seg| seg == "..") {
                    self.error(
                        &join(path, "destination"),
                        Code::InvalidValue,
                        format!("`{d}` climbs with `..`"),
                        "write the final path without `..`",
                    );
                } else if d.ends_with('/') || d.ends_with('\\') {
                    self.error(
                        &join(path, "destination"),
                        Code::InvalidValue,
                        format!("`{d}` names a directory"),
                        "include the file name in `destination`",
                    );
                }
            }
            _ => {}
        }
        self.checksum(&join(path, "sha256Checksum"), &f.sha256_checksum);
    }

    fn powershell(&mut self, path: &str, p: &PowerShellStep, validator: bool) {
        self.script(path, &p.script_uri, &p.inline, &p.sha256_checksum, validator);
        if lit(&p.run_as_system) == Some(true) && lit(&p.run_elevated) != Some(true) {
            self.error(
                &join(path, "runAsSystem"),
                Code::ConflictingFields,
                "`runAsSystem` needs `runElevated`",
                "set `runElevated: true` as well, or drop `runAsSystem`",
            );
        }
        if let Some(Expr::Value(codes)) = &p.valid_exit_codes
            && codes.is_empty()
        {
            self.warn(
                &join(path, "validExitCodes"),
                Code::Discouraged,
                "an empty `validExitCodes` means the default `[0]`",
                "list the exit codes that mean success",
            );
        }
    }

    fn customizer(&mut self, path: &str, c: &CustomizerSpec) {
        match c {
            CustomizerSpec::Shell(s) => self.script(path, &s.script_uri, &s.inline, &s.sha256_checksum, false),
            CustomizerSpec::PowerShell(p) => self.powershell(path, p, false),
            CustomizerSpec::File(f) => self.file(path, f),
            CustomizerSpec::WindowsRestart(r) => {
                if let Some(t) = &r.restart_timeout
                    && !is_arm_expression(t)
                    && parse_go_duration(t).is_none()
                {
                    self.error(
                        &join(path, "restartTimeout"),
                        Code::BadRestartTimeout,
                        format!("`{t}` is not a duration"),
                        "write a number and a unit: `5m`, `90s`, `1h30m`",
                    );
                }
            }
            CustomizerSpec::WindowsUpdate(u) => {
                if let Some(n) = lit(&u.update_limit)
                    && n < 0
                {
                    self.error(
                        &join(path, "updateLimit"),
                        Code::OutOfRange,
                        format!("`updateLimit` is {n}"),
                        "use 0 (= 1000) or a positive number",
                    );
                }
                if let Some(Expr::Value(filters)) = &u.filters {
                    for (i, f) in filters.iter().enumerate() {
                        if !(f.starts_with("include:") || f.starts_with("exclude:")) {
                            self.warn(
                                &format!("{path}.filters[{i}]"),
                                Code::InvalidValue,
                                format!("filter `{f}` has no `include:` or `exclude:` prefix; it is read as `include:{f}`"),
                                "write `include:EXPR` or `exclude:EXPR`, for example `exclude:$_.Title -like '*Preview*'`",
                            );
                        }
                    }
                }
            }
            CustomizerSpec::Custom(s) => {
                if !self.types.customizers.contains(&s.type_name) {
                    let known = self.types.customizers.iter().cloned().collect::<Vec<_>>().join(", ");
                    self.error(
                        &join(path, "type"),
                        Code::BadCustomizerType,
                        format!("unknown customizer type `{}`", s.type_name),
                        format!("use one of {known}, or register a plugin for this type"),
                    );
                }
            }
        }
    }

    fn validator(&mut self, path: &str, v: &ValidatorSpec) {
        match v {
            ValidatorSpec::Shell(s) => self.script(path, &s.script_uri, &s.inline, &s.sha256_checksum, true),
            ValidatorSpec::PowerShell(p) => self.powershell(path, p, true),
            ValidatorSpec::File(f) => self.file(path, f),
            ValidatorSpec::Custom(s) => {
                if matches!(s.type_name.as_str(), "WindowsRestart" | "WindowsUpdate") {
                    self.error(
                        &join(path, "type"),
                        Code::UnsupportedValidatorType,
                        format!("`{}` cannot be a validator", s.type_name),
                        "validators are Shell, PowerShell or File; restart in a customizer instead",
                    );
                } else if !self.types.validators.contains(&s.type_name) {
                    let known = self.types.validators.iter().cloned().collect::<Vec<_>>().join(", ");
                    self.error(
                        &join(path, "type"),
                        Code::BadValidatorType,
                        format!("unknown validator type `{}`", s.type_name),
                        format!("use one of {known}"),
                    );
                }
            }
        }
    }

    fn source(&mut self, path: &str, s: &ImageSource) {
        match s {
            ImageSource::PlatformImage(p) => {
                for (k, v) in [("publisher", &p.publisher), ("offer", &p.offer), ("sku", &p.sku), ("version", &p.version)] {
                    if v.as_deref().is_none_or(str::is_empty) {
                        self.error(
                            &join(path, k),
                            Code::BadPIRSource,
                            format!("platform image `{k}` is required"),
                            "give publisher, offer, sku and version (`latest` is allowed)",
                        );
                    }
                }
            }
            ImageSource::ManagedImage(m) => {
                self.id(&join(path, "imageId"), &m.image_id, Code::BadManagedImageSource, &armid::MANAGED_IMAGE)
            }
            ImageSource::SharedImageVersion(v) => self.arm_id(
                &join(path, "imageVersionId"),
                &v.image_version_id,
                Code::BadSharedImageVersionSource,
                armid::check_image_version,
                armid::GALLERY_IMAGE_VERSION.example,
            ),
            ImageSource::Custom(c) => {
                if !self.types.sources.contains(&c.type_name) {
                    let known = self.types.sources.iter().cloned().collect::<Vec<_>>().join(", ");
                    self.error(
                        &join(path, "type"),
                        Code::BadSourceType,
                        format!("unknown source type `{}`", c.type_name),
                        format!("use one of {known}"),
                    );
                }
            }
        }
    }

    fn shared_image(&mut self, path: &str, t: &SharedImageTarget) {
        let code = Code::BadSharedImageDistribute;
        let gid = &t.gallery_image_id;
        let explicit_version = gid.to_ascii_lowercase().contains("/versions/");
        if explicit_version {
            self.id(&join(path, "galleryImageId"), gid, code, &armid::GALLERY_IMAGE_VERSION);
            if let Some(v) = gid.rsplit('/').next().filter(|_| !armid::opaque(gid) && placeholder(gid).is_none()) {
                let parts: Vec<&str> = v.split('.').collect();
                if parts.len() != 3 || parts.iter().any(|p| p.is_empty() || p.parse::<u32>().is_err()) {
                    self.error(
                        &join(path, "galleryImageId"),
                        code,
                        format!("version `{v}` is not MAJOR.MINOR.PATCH"),
                        "use a version such as 1.0.0, or omit it and use `versioning`",
                    );
                }
            }
            if t.versioning.is_some() {
                self.error(
                    &join(path, "versioning"),
                    code,
                    "`versioning` cannot be used with an explicit version in `galleryImageId`",
                    "drop the version from `galleryImageId` or drop `versioning`",
                );
            }
        } else {
            self.id(&join(path, "galleryImageId"), gid, code, &armid::GALLERY_IMAGE);
        }
        if t.target_regions.is_some() && t.replication_regions.is_some() {
            self.error(
                &join(path, "replicationRegions"),
                code,
                "`targetRegions` and `replicationRegions` exclude each other",
                "keep `targetRegions` (replicationRegions is deprecated)",
            );
        }
        if t.storage_account_type.is_some() && t.replication_regions.is_none() {
            self.error(
                &join(path, "storageAccountType"),
                code,
                "`storageAccountType` is only valid with `replicationRegions`",
                "set `storageAccountType` per entry of `targetRegions` instead",
            );
        }
        if let Some(Expr::Value(regions)) = &t.replication_regions
            && regions.is_empty()
        {
            self.error(&join(path, "replicationRegions"), code, "`replicationRegions` is empty", "list at least the gallery's region");
        }
        if let Some(Expr::Value(regions)) = &t.target_regions {
            let mut seen = HashMap::new();
            for (i, r) in regions.iter().enumerate() {
                let rp = format!("{path}.targetRegions[{i}]");
                if let Some(prev) = seen.insert(r.name.to_ascii_lowercase(), i) {
                    self.error(
                        &join(&rp, "name"),
                        code,
                        format!("region `{}` is listed twice (also at [{prev}])", r.name),
                        "list each region once",
                    );
                }
                if let Some(n) = lit(&r.replica_count)
                    && !(1..=100).contains(&n)
                {
                    self.error(
                        &join(&rp, "replicaCount"),
                        Code::OutOfRange,
                        format!("replicaCount {n} is out of range"),
                        "use 1 to 100 replicas",
                    );
                }
                if let Some(s) = &r.storage_account_type
                    && !["Standard_LRS", "Standard_ZRS", "Premium_LRS"].contains(&s.as_str())
                    && !is_arm_expression(s)
                {
                    self.warn(
                        &join(&rp, "storageAccountType"),
                        Code::InvalidValue,
                        format!("unknown storage account type `{s}`"),
                        "Standard_LRS, Standard_ZRS or Premium_LRS",
                    );
                }
            }
        }
        if let Some(Versioning::Latest { major: Some(Expr::Value(m)) }) = &t.versioning
            && *m < -1
        {
            self.error(
                &join(path, "versioning.major"),
                Code::OutOfRange,
                format!("major {m} is below -1"),
                "use -1 (any) or a major version ≥ 0",
            );
        }
    }

    fn distributor(&mut self, path: &str, d: &DistributorSpec) {
        match d {
            DistributorSpec::ManagedImage(m) => self.id(&join(path, "imageId"), &m.image_id, Code::BadResourceId, &armid::MANAGED_IMAGE),
            DistributorSpec::SharedImage(s) => self.shared_image(path, s),
            DistributorSpec::Vhd(v) => {
                if let Some(u) = &v.uri {
                    self.uri(&join(path, "uri"), u, &["https", "http"]);
                }
            }
            DistributorSpec::Custom(c) => {
                if !self.types.distributors.contains(&c.type_name) {
                    let known = self.types.distributors.iter().cloned().collect::<Vec<_>>().join(", ");
                    self.error(
                        &join(path, "type"),
                        Code::BadDistributeType,
                        format!("unknown distributor type `{}`", c.type_name),
                        format!("use one of {known}"),
                    );
                }
            }
        }
    }
}

/// Runs every semantic check on `t`, whose JSON sits at `prefix` in its document.
pub(crate) fn check(t: &ImageTemplate, prefix: &str, types: &TypeNames, out: &mut Vec<Diagnostic>) {
    let mut c = Checker { out, types };
    let props = join(prefix, "properties");
    let p = &t.properties;
    if let Some(name) = &t.name
        && !is_valid_name(name)
        && !is_arm_expression(name)
        && placeholder(name).is_none()
    {
        c.error(
            &join(prefix, "name"),
            Code::InvalidValue,
            format!("template name `{name}` does not match ^[A-Za-z0-9-_.]{{1,64}}$"),
            "use letters, digits, `-`, `_` and `.`, at most 64",
        );
    }
    match &t.identity {
        None => c.warn(
            &join(prefix, "identity"),
            Code::BadIdentity,
            "no template `identity`: Azure requires one",
            "add a user-assigned identity for Azure builds; local builds do not need it",
        ),
        Some(id) => {
            let ids = id.user_assigned_identities.as_ref().and_then(Expr::value);
            match (id.kind, ids.map(|m| m.len())) {
                (IdentityType::UserAssigned, Some(0) | None) if !matches!(id.user_assigned_identities, Some(Expr::Expression(_))) => c
                    .error(
                        &join(prefix, "identity.userAssignedIdentities"),
                        Code::BadIdentity,
                        "`UserAssigned` needs one identity",
                        "add the identity's resource id as a key with `{}` as value",
                    ),
                (IdentityType::UserAssigned, Some(n)) if n > 1 => c.error(
                    &join(prefix, "identity.userAssignedIdentities"),
                    Code::BadIdentity,
                    format!("{n} identities given; the template supports one"),
                    "keep one template identity; give more to the build VM in `vmProfile.userAssignedIdentities`",
                ),
                (IdentityType::None, Some(n)) if n > 0 => c.error(
                    &join(prefix, "identity.userAssignedIdentities"),
                    Code::BadIdentity,
                    "identity type `None` with identities listed",
                    "set type `UserAssigned` or drop the identities",
                ),
                _ => {}
            }
            for key in ids.into_iter().flat_map(|m| m.keys()) {
                c.id(
                    format!("{prefix}.identity.userAssignedIdentities.{key}").trim_start_matches('.'),
                    key,
                    Code::BadIdentity,
                    &armid::USER_IDENTITY,
                );
            }
        }
    }
    c.source(&join(&props, "source"), &p.source);
    let mut windows = None;
    let mut linux = None;
    for (i, step) in p.customize.iter().enumerate() {
        let sp = format!("{props}.customize[{i}]");
        c.customizer(&sp, step);
        match step {
            CustomizerSpec::Shell(_) => linux = linux.or(Some(sp)),
            CustomizerSpec::PowerShell(_) | CustomizerSpec::WindowsRestart(_) | CustomizerSpec::WindowsUpdate(_) => {
                windows = windows.or(Some(sp))
            }
            _ => {}
        }
    }
    if let (Some(l), Some(w)) = (&linux, &windows) {
        c.warn(
            w,
            Code::Discouraged,
            format!("this Windows step and the Linux `Shell` step at {l} cannot both run on one OS"),
            "use Shell steps for Linux images and PowerShell steps for Windows images",
        );
    }
    if let Some(v) = &p.validate {
        let vp = join(&props, "validate");
        if lit(&v.source_validation_only) == Some(true) && !p.customize.is_empty() {
            c.error(
                &join(&vp, "sourceValidationOnly"),
                Code::ConflictingFields,
                "`sourceValidationOnly` cannot be combined with `customize`",
                "drop `customize`, or set `sourceValidationOnly` to false",
            );
        }
        if v.in_vm_validations.is_empty() {
            c.warn(
                &join(&vp, "inVMValidations"),
                Code::Discouraged,
                "`validate` has no `inVMValidations`",
                "add Shell, PowerShell or File validators",
            );
        }
        for (i, val) in v.in_vm_validations.iter().enumerate() {
            c.validator(&format!("{vp}.inVMValidations[{i}]"), val);
        }
    }
    if p.distribute.is_empty() {
        c.error(
            &join(&props, "distribute"),
            Code::NoDistributeTarget,
            "no distribution target",
            "add at least one of ManagedImage, SharedImage or VHD",
        );
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, d) in p.distribute.iter().enumerate() {
        let dp = format!("{props}.distribute[{i}]");
        let ron = d.run_output_name();
        if !ron.is_empty() && !is_arm_expression(ron) && placeholder(ron).is_none() {
            if !is_valid_name(ron) {
                c.error(
                    &join(&dp, "runOutputName"),
                    Code::BadRunOutputName,
                    format!("`{ron}` does not match ^[A-Za-z0-9-_.]{{1,64}}$"),
                    "use letters, digits, `-`, `_` and `.`, at most 64",
                );
            }
            if let Some(prev) = names.insert(ron.to_string(), i) {
                c.error(
                    &join(&dp, "runOutputName"),
                    Code::DuplicateRunOutputName,
                    format!("`{ron}` is already used by distribute[{prev}]"),
                    "give every target its own runOutputName",
                );
            }
        }
        c.distributor(&dp, d);
    }
    if let Some(Expr::Value(n)) = &p.build_timeout_in_minutes {
        let tp = join(&props, "buildTimeoutInMinutes");
        if !(0..=super::MAX_BUILD_TIMEOUT_MINUTES as i32).contains(n) {
            let hint = format!("use 0 (the default, 240) to {}", super::MAX_BUILD_TIMEOUT_MINUTES);
            c.error(&tp, Code::OutOfRange, format!("buildTimeoutInMinutes {n} is out of range"), hint);
        } else if (1..6).contains(n) {
            c.warn(&tp, Code::Discouraged, format!("{n} minutes is below the effective minimum of 6"), "allow at least 6 minutes");
        }
    }
    if let Some(vm) = &p.vm_profile {
        let vp = join(&props, "vmProfile");
        if let Some(n) = lit(&vm.os_disk_size_gb)
            && n < 0
        {
            c.error(
                &join(&vp, "osDiskSizeGB"),
                Code::OutOfRange,
                format!("osDiskSizeGB {n} is negative"),
                "use 0 to keep the source size, or the size in GB",
            );
        }
        if let Some(Expr::Value(ids)) = &vm.user_assigned_identities {
            for (i, id) in ids.iter().enumerate() {
                c.id(&format!("{vp}.userAssignedIdentities[{i}]"), id, Code::BadResourceId, &armid::USER_IDENTITY);
            }
        }
        if let Some(n) = &vm.vnet_config {
            let np = join(&vp, "vnetConfig");
            if let Some(s) = &n.subnet_id {
                c.id(&join(&np, "subnetId"), s, Code::BadResourceId, &armid::SUBNET);
            }
            if let Some(s) = &n.container_instance_subnet_id {
                c.id(&join(&np, "containerInstanceSubnetId"), s, Code::BadResourceId, &armid::SUBNET);
                if n.subnet_id.as_deref().is_none_or(str::is_empty) {
                    c.error(
                        &join(&np, "containerInstanceSubnetId"),
                        Code::ConflictingFields,
                        "`containerInstanceSubnetId` needs `subnetId`",
                        "set `subnetId` to the build VM's subnet in the same VNet",
                    );
                }
                if n.proxy_vm_size.as_deref().is_some_and(|s| !s.is_empty()) {
                    c.error(
                        &join(&np, "proxyVmSize"),
                        Code::ConflictingFields,
                        "`proxyVmSize` cannot be set with `containerInstanceSubnetId` (isolated builds use no proxy VM)",
                        "drop `proxyVmSize`",
                    );
                }
            }
        }
    }
    if let Some(disks) = &p.additional_data_disks {
        for (i, d) in disks.iter().enumerate() {
            let dp = format!("{props}.additionalDataDisks[{i}].sizeGB");
            match lit(&d.size_gb) {
                Some(n) if n < 0 => c.error(&dp, Code::OutOfRange, format!("sizeGB {n} is negative"), "give the disk size in GB"),
                None if d.size_gb.is_none() => c.error(&dp, Code::MissingField, "`sizeGB` is required", "give the disk size in GB"),
                _ => {}
            }
        }
    }
    if let Some(rg) = &p.staging_resource_group {
        c.arm_id(
            &join(&props, "stagingResourceGroup"),
            rg,
            Code::BadStagingResourceGroup,
            armid::check_resource_group,
            "/subscriptions/SUB/resourceGroups/NAME",
        );
    }
    if let Some(w) = p.optimize.as_ref().and_then(|o| o.workload.as_ref()) {
        let wp = join(&props, "optimize.workload");
        if let Some(u) = &w.script_uri {
            c.uri(&join(&wp, "scriptUri"), u, &["https", "http", "file"]);
        }
        c.checksum(&join(&wp, "sha256Checksum"), &w.sha256_checksum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("5m").unwrap().as_secs(), 300);
        assert_eq!(parse_go_duration("1h30m").unwrap().as_secs(), 5400);
        assert_eq!(parse_go_duration("1.5h").unwrap().as_secs(), 5400);
        for bad in ["", "5", "m", "5 m", "5d", "-5m", "5m3"] {
            assert!(parse_go_duration(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn names_and_sums() {
        assert!(is_valid_name("image_it-1.0"));
        assert!(!is_valid_name("bad name") && !is_valid_name("") && !is_valid_name(&"a".repeat(65)));
        assert!(is_sha256_hex(&"a".repeat(64)) && !is_sha256_hex("abc"));
    }
}
