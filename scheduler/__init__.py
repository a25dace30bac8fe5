"""The orch scheduler process: Cluster API, controllers, scheduling loop, node protocol."""
