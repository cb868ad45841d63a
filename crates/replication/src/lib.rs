//! Ferry's replication protocol (roles, leases, epochs, acknowledgements, election) as a state machine with no sockets and no clock.
