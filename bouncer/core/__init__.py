"""The vocabulary between the edges and the decisions: events in, effects out, ports to IO."""
