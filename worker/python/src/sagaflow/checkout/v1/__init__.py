"""Generated from proto/ by tools/gen_stubs.py; do not edit."""
