"""Model lifecycle (torch): split a detector, fit and export bundles, evaluate them."""
