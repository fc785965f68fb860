"""Pod networking: network namespaces and CNI plugin execution. No CRI types here."""
