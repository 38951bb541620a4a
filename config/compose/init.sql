-- The application's role and database; rotations change app_owner's password.
CREATE ROLE app_owner LOGIN PASSWORD 'compose-initial-pw';
CREATE DATABASE app OWNER app_owner;
-- A second database behind the same rotagate, with a secret of its own on the same queue.
CREATE ROLE reports_owner LOGIN PASSWORD 'compose-reports-pw';
CREATE DATABASE reports OWNER reports_owner;
