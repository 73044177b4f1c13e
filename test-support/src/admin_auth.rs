//! What both services' admin-token tests send: concrete paths for route templates, and the
//! `Authorization` headers the admin guard must refuse.

/// A path template (`/orders/{id}`) with its parameters filled in with a fresh id.
pub fn concrete(template: &str) -> String {
    template.replace("{id}", &uuid::Uuid::now_v7().to_string())
}

/// The `Authorization` values (`None`: no header) a route behind the admin token `token` must
/// answer 401: none, a wrong token, a truncated one, an empty bearer, the right token under
/// another scheme, and the right token without a scheme.
pub fn refused_authorizations(token: &str) -> [Option<String>; 6] {
    let wrong = format!("{token}x");
    let short = &token[..token.len() - 1];
    [
        None,
        Some(format!("Bearer {wrong}")),
        Some(format!("Bearer {short}")),
        Some("Bearer ".to_owned()),
        Some(format!("Basic {token}")),
        Some(token.to_owned()),
    ]
}

/// The statuses of `method url` (an empty JSON object as the body) sent without a token and
/// with `Authorization: Bearer <token>`, in that order.
pub async fn statuses_without_and_with_token(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: &str,
) -> (reqwest::StatusCode, reqwest::StatusCode) {
    let send = |token: Option<&str>| {
        let mut request = http
            .request(method.clone(), url)
            .header("content-type", "application/json")
            .body("{}");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let without = send(None).await.unwrap().status();
    let with = send(Some(token)).await.unwrap().status();
    (without, with)
}
