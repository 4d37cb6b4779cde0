//! Serialization and JSON Schema of the tagged unions (`type`/`scheme` discriminators).
//!
//! Serialization writes the discriminator first and then the variant's own fields, so that
//! output reads like Microsoft's templates. The schema describes AIB's types; plugin types
//! are an extension the schema does not list.

use super::model::*;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::ser::{Error as _, SerializeMap};
use serde::{Serialize, Serializer};
use serde_json::Value;
use std::borrow::Cow;

fn tagged<S: Serializer, T: Serialize>(s: S, tag: &str, ty: &str, body: &T) -> Result<S::Ok, S::Error> {
    let value = serde_json::to_value(body).map_err(S::Error::custom)?;
    let mut map = s.serialize_map(None)?;
    map.serialize_entry(tag, ty)?;
    if let Value::Object(fields) = value {
        for (k, v) in fields {
            if k != tag {
                map.serialize_entry(&k, &v)?;
            }
        }
    }
    map.end()
}

impl Serialize for CustomSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        tagged(s, "type", &self.type_name, &self.fields)
    }
}

impl Serialize for ImageSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ImageSource::PlatformImage(v) => tagged(s, "type", "PlatformImage", v),
            ImageSource::ManagedImage(v) => tagged(s, "type", "ManagedImage", v),
            ImageSource::SharedImageVersion(v) => tagged(s, "type", "SharedImageVersion", v),
            ImageSource::Custom(c) => c.serialize(s),
        }
    }
}

impl Serialize for CustomizerSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CustomizerSpec::Shell(v) => tagged(s, "type", "Shell", v),
            CustomizerSpec::PowerShell(v) => tagged(s, "type", "PowerShell", v),
            CustomizerSpec::File(v) => tagged(s, "type", "File", v),
            CustomizerSpec::WindowsRestart(v) => tagged(s, "type", "WindowsRestart", v),
            CustomizerSpec::WindowsUpdate(v) => tagged(s, "type", "WindowsUpdate", v),
            CustomizerSpec::Custom(c) => c.serialize(s),
        }
    }
}

impl Serialize for ValidatorSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.as_customizer().serialize(s)
    }
}

impl Serialize for DistributorSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DistributorSpec::ManagedImage(v) => tagged(s, "type", "ManagedImage", v),
            DistributorSpec::SharedImage(v) => tagged(s, "type", "SharedImage", v),
            DistributorSpec::Vhd(v) => tagged(s, "type", "VHD", v),
            DistributorSpec::Custom(c) => c.serialize(s),
        }
    }
}

impl Serialize for Versioning {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        match self {
            Versioning::Latest { major } => {
                map.serialize_entry("scheme", "Latest")?;
                if let Some(m) = major {
                    map.serialize_entry("major", m)?;
                }
            }
            Versioning::Source => map.serialize_entry("scheme", "Source")?,
        }
        map.end()
    }
}

fn variant(generator: &mut SchemaGenerator, tag: &str, name: &str, body: Option<Schema>) -> Schema {
    let mut s = json_schema!({
        "type": "object",
        "properties": { tag: { "const": name } },
        "required": [tag],
    });
    if let Some(body) = body {
        s.insert("allOf".into(), Value::Array(vec![body.to_value()]));
    }
    let _ = generator;
    s
}

fn one_of(variants: Vec<Schema>, description: &str) -> Schema {
    json_schema!({
        "description": description,
        "oneOf": variants.into_iter().map(Schema::to_value).collect::<Vec<_>>(),
    })
}

macro_rules! union_schema {
    ($ty:ty, $name:literal, $desc:literal, [$( ($tag:literal, $body:ty) ),* $(,)?]) => {
        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }
            fn json_schema(g: &mut SchemaGenerator) -> Schema {
                let variants = vec![$( {
                    let body = g.subschema_for::<$body>();
                    variant(g, "type", $tag, Some(body))
                } ),*];
                one_of(variants, $desc)
            }
        }
    };
}

union_schema!(
    ImageSource,
    "ImageTemplateSource",
    "The image to start from (discriminator `type`).",
    [("PlatformImage", PlatformImageSource), ("ManagedImage", ManagedImageSource), ("SharedImageVersion", SharedImageVersionSource),]
);
union_schema!(
    CustomizerSpec,
    "ImageTemplateCustomizer",
    "A customization step (discriminator `type`).",
    [
        ("Shell", ShellStep),
        ("PowerShell", PowerShellStep),
        ("File", FileStep),
        ("WindowsRestart", WindowsRestartStep),
        ("WindowsUpdate", WindowsUpdateStep),
    ]
);
union_schema!(
    ValidatorSpec,
    "ImageTemplateInVMValidator",
    "A validation step (discriminator `type`).",
    [("Shell", ShellStep), ("PowerShell", PowerShellStep), ("File", FileStep),]
);
union_schema!(
    DistributorSpec,
    "ImageTemplateDistributor",
    "A distribution target (discriminator `type`).",
    [("ManagedImage", ManagedImageTarget), ("SharedImage", SharedImageTarget), ("VHD", VhdTarget),]
);

impl JsonSchema for Versioning {
    fn schema_name() -> Cow<'static, str> {
        "DistributeVersioner".into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let major = json_schema!({
            "type": "object",
            "properties": { "major": { "type": "integer", "format": "int32", "minimum": -1 } },
        });
        let latest = variant(g, "scheme", "Latest", Some(major));
        let source = variant(g, "scheme", "Source", None);
        one_of(vec![latest, source], "How a gallery version number is chosen (discriminator `scheme`).")
    }
}

/// The JSON Schema of an image template resource (draft 2020-12).
pub fn template_schema() -> Schema {
    let mut schema = schemars::generate::SchemaSettings::draft2020_12().into_generator().into_root_schema_for::<ImageTemplate>();
    schema.insert("description".into(), "Microsoft.VirtualMachineImages/imageTemplates (API 2025-10-01), as aib reads it".into());
    schema
}
