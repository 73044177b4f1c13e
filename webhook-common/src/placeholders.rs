//! The example credentials this repository publishes (`.env.example`), refused at startup.
//!
//! `cp .env.example .env && docker compose up` must not give a running shop whose admin token
//! and webhook secret anyone who has read this repository knows. The values below pass every
//! format check (that is what makes them good examples), so they are refused by name, with a
//! message that says how to make real ones.

/// The admin token `.env.example` ships.
pub const EXAMPLE_ADMIN_TOKEN: &str = "replace-me-with-a-long-random-token";

/// The webhook secret `.env.example` ships.
pub const EXAMPLE_WEBHOOK_SECRET: &str = "whsec_cmVwbGFjZS1tZS13aXRoLXJhbmRvbS1ieXRlcyEhIQ==";

/// `Err` with the reason if `token` is the published example admin token.
pub fn refuse_example_admin_token(token: &str) -> Result<(), String> {
    if token.trim() == EXAMPLE_ADMIN_TOKEN {
        return Err(
            "is the placeholder from .env.example, which anyone who reads this \
                    repository knows; generate a real one with `openssl rand -hex 32`"
                .to_owned(),
        );
    }
    Ok(())
}

/// `Err` with the reason if `secrets` (one secret, or several separated by spaces during a
/// rotation) includes the published example webhook secret.
pub fn refuse_example_webhook_secret(secrets: &str) -> Result<(), String> {
    if secrets
        .split_whitespace()
        .any(|s| s == EXAMPLE_WEBHOOK_SECRET)
    {
        return Err(
            "is the placeholder from .env.example, which anyone who reads this \
                    repository knows; generate a real one with \
                    `echo \"whsec_$(openssl rand -base64 32)\"`"
                .to_owned(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_examples_are_refused_and_real_values_pass() {
        assert!(refuse_example_admin_token(EXAMPLE_ADMIN_TOKEN).is_err());
        assert!(refuse_example_admin_token("a-real-token-0123456789abcdef").is_ok());
        let rotating =
            format!("whsec_bmV3LXNlY3JldC1ieXRlcy0xMjM0NTY3OA== {EXAMPLE_WEBHOOK_SECRET}");
        assert!(refuse_example_webhook_secret(&rotating).is_err());
        let err = refuse_example_webhook_secret(EXAMPLE_WEBHOOK_SECRET).unwrap_err();
        assert!(err.contains("openssl rand"), "{err}");
        assert!(
            refuse_example_webhook_secret("whsec_bmV3LXNlY3JldC1ieXRlcy0xMjM0NTY3OA==").is_ok()
        );
    }

    /// The example secret is a well-formed one: only the name check keeps it out.
    #[test]
    fn the_example_secret_is_well_formed() {
        assert!(crate::Secret::parse(EXAMPLE_WEBHOOK_SECRET).is_ok());
    }
}
