"""The reference shop's checkout API (generated stubs under checkout.v1)."""
