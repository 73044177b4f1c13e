//! notification-service
