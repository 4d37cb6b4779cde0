//! Microsoft's published templates (the corpus) carry `<placeholders>` for the user's
//! subscription, resource group, identity and names; tests fill them to build one.

/// `text` with `<subscriptionID>` and `<rgName>` set, `<imgBuilderId>` naming the
/// user-assigned identity `aib` in that group, and every `(placeholder, value)` of `others`
/// (`<region>`, `[parameters('svclocation')]`, …) replaced.
///
/// ```
/// let t = aib_testkit::corpus::fill_placeholders(
///     r#"{"location": "<region>", "imageId": "/subscriptions/<subscriptionID>/resourceGroups/<rgName>/x"}"#,
///     "sub",
///     "rg",
///     &[("<region>", "westus2")],
/// );
/// assert_eq!(t, r#"{"location": "westus2", "imageId": "/subscriptions/sub/resourceGroups/rg/x"}"#);
/// ```
pub fn fill_placeholders(text: &str, subscription: &str, resource_group: &str, others: &[(&str, &str)]) -> String {
    let identity = format!(
        "/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/aib"
    );
    let mut out = text.replace("<subscriptionID>", subscription).replace("<rgName>", resource_group).replace("<imgBuilderId>", &identity);
    for (placeholder, value) in others {
        out = out.replace(placeholder, value);
    }
    out
}
