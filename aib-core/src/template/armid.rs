//! Azure resource ids: just enough structure to tell a well-formed id from a broken one.

use super::decode::{is_arm_expression, placeholder};

/// The resource a well-formed id must name.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdShape {
    pub(crate) namespace: &'static str,
    pub(crate) types: &'static [&'static str],
    pub(crate) example: &'static str,
}

pub(crate) const MANAGED_IMAGE: IdShape = IdShape {
    namespace: "Microsoft.Compute",
    types: &["images"],
    example: "/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Compute/images/NAME",
};
pub(crate) const GALLERY_IMAGE: IdShape = IdShape {
    namespace: "Microsoft.Compute",
    types: &["galleries", "images"],
    example: "/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Compute/galleries/GALLERY/images/DEFINITION",
};
pub(crate) const GALLERY_IMAGE_VERSION: IdShape = IdShape {
    namespace: "Microsoft.Compute",
    types: &["galleries", "images", "versions"],
    example: "/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Compute/galleries/GALLERY/images/DEFINITION/versions/1.0.0",
};
pub(crate) const SUBNET: IdShape = IdShape {
    namespace: "Microsoft.Network",
    types: &["virtualNetworks", "subnets"],
    example: "/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Network/virtualNetworks/VNET/subnets/SUBNET",
};
pub(crate) const USER_IDENTITY: IdShape = IdShape {
    namespace: "Microsoft.ManagedIdentity",
    types: &["userAssignedIdentities"],
    example: "/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.ManagedIdentity/userAssignedIdentities/NAME",
};

/// A parsed id: `(type, name)` pairs after the provider namespace.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ArmId<'a> {
    pub(crate) subscription: &'a str,
    pub(crate) resource_group: &'a str,
    pub(crate) namespace: &'a str,
    pub(crate) segments: Vec<(&'a str, &'a str)>,
}

/// True when the value cannot be checked: an ARM expression or one whole placeholder.
pub(crate) fn opaque(s: &str) -> bool {
    is_arm_expression(s) || placeholder(s).is_some_and(|p| p.len() == s.trim().len())
}

fn segments(s: &str) -> Result<Vec<&str>, String> {
    let rest = s.strip_prefix('/').ok_or("a resource id starts with `/subscriptions/`")?;
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err("the id has an empty segment (`//` or a trailing `/`)".into());
    }
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err("the id has a `.` or `..` segment".into());
    }
    if parts.iter().any(|p| p.chars().any(|c| c.is_whitespace() || c.is_control() || "?#".contains(c))) {
        return Err("the id holds whitespace, `?` or `#`".into());
    }
    Ok(parts)
}

/// Parses `/subscriptions/S/resourceGroups/R/providers/NS/type/name[/type/name…]`.
pub(crate) fn parse(s: &str) -> Result<ArmId<'_>, String> {
    let p = segments(s)?;
    if p.len() < 4 || !p[0].eq_ignore_ascii_case("subscriptions") || !p[2].eq_ignore_ascii_case("resourceGroups") {
        return Err("expected `/subscriptions/SUB/resourceGroups/RG/…`".into());
    }
    if p.len() == 4 {
        return Ok(ArmId { subscription: p[1], resource_group: p[3], namespace: "", segments: Vec::new() });
    }
    if p.len() < 8 || !p[4].eq_ignore_ascii_case("providers") {
        return Err("expected `/providers/NAMESPACE/TYPE/NAME` after the resource group".into());
    }
    if p.len() % 2 != 0 {
        return Err("the id ends with a resource type but no name".into());
    }
    let segments = p[6..].chunks(2).map(|c| (c[0], c[1])).collect();
    Ok(ArmId { subscription: p[1], resource_group: p[3], namespace: p[5], segments })
}

/// Checks `s` against `shape`; `Err` says what is wrong.
pub(crate) fn check(s: &str, shape: &IdShape) -> Result<(), String> {
    let id = parse(s)?;
    if !id.namespace.eq_ignore_ascii_case(shape.namespace) {
        return Err(format!(
            "expected a `{}` resource, found provider `{}`",
            shape.namespace,
            if id.namespace.is_empty() { "(none)" } else { id.namespace }
        ));
    }
    let types: Vec<&str> = id.segments.iter().map(|s| s.0).collect();
    let matches = types.len() == shape.types.len() && types.iter().zip(shape.types).all(|(a, b)| a.eq_ignore_ascii_case(b));
    if !matches {
        return Err(format!(
            "expected resource type `{}/{}`, found `{}/{}`",
            shape.namespace,
            shape.types.join("/"),
            id.namespace,
            types.join("/")
        ));
    }
    Ok(())
}

/// Checks a resource group id `/subscriptions/S/resourceGroups/R`.
pub(crate) fn check_resource_group(s: &str) -> Result<(), String> {
    let id = parse(s)?;
    if !id.namespace.is_empty() {
        return Err("expected a resource group id with nothing after the group name".into());
    }
    Ok(())
}

/// Checks an image version id in a gallery, a direct-shared or a community gallery.
pub(crate) fn check_image_version(s: &str) -> Result<(), String> {
    let lower = s.to_ascii_lowercase();
    if lower.starts_with("/sharedgalleries/") || lower.starts_with("/communitygalleries/") {
        let p = segments(s)?;
        let ok = p.len() == 6 && p[2].eq_ignore_ascii_case("images") && p[4].eq_ignore_ascii_case("versions");
        return if ok { Ok(()) } else { Err("expected `/sharedGalleries/G/images/D/versions/V`".into()) };
    }
    check(s, &GALLERY_IMAGE_VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        let id = "/subscriptions/s/resourcegroups/rg/providers/Microsoft.Compute/galleries/g/images/d";
        assert!(check(id, &GALLERY_IMAGE).is_ok());
        assert!(check(id, &MANAGED_IMAGE).is_err());
        assert!(check("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/", &MANAGED_IMAGE).is_err());
        assert!(check("subscriptions/s", &MANAGED_IMAGE).is_err());
        assert!(check_resource_group("/subscriptions/s/resourceGroups/rg").is_ok());
        assert!(check_image_version("/sharedGalleries/x/images/d/versions/latest").is_ok());
        assert!(opaque("<imgBuilderId>") && opaque("[parameters('x')]") && !opaque("/subscriptions/<s>/x"));
    }
}
