"""The OCI runtime layer: runc/crun driven through conmon. No CRI types here."""
