-- First start of the compose PostgreSQL (docker-compose.postgres.yml): one database per
-- service, each migrated by its service at startup.
CREATE DATABASE orders;
CREATE DATABASE notifications;
