-- The application's role and database; rotations change app_owner's password.
CREATE ROLE app_owner LOGIN PASSWORD 'compose-initial-pw';
CREATE DATABASE app OWNER app_owner;
