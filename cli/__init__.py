"""``orchctl``: the command line of orch, kubectl's conventions over the Cluster API."""
