"""The stream processor: Faust app, agents, tables, provider budget and LLM client."""
