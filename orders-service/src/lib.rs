//! orders-service
