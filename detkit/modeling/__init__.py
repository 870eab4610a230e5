"""Detection model parts: backbone, RPN, RoI heads, the detector."""
