"""Pure Medusa algorithm: trees, buffers, acceptance, tree optimizer. No files, no HTTP."""
