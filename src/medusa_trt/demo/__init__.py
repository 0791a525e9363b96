"""The embedded-default demo: tiny Llama 3 on stdlib source, trained heads, tuned tree, measured."""
