"""The MCP server: how LLMs use Memora.

- `access`: who is calling (a bearer token over HTTP, the local user over stdio) and in which
  namespace; the same tokens and tenants as REST.
- `arguments`: the optional arguments every tool shares (session, provenance, validity, as_of).
- `compat_tools`: the reference memory server's nine tools and its `memory://knowledge-graph`
  resource, with the same argument and result shapes.
- `extended_tools`: the tools it does not have (recall, history, provenance, sessions...).
- `server`: one `MCPServer` with all of them; `http`: streamable HTTP inside `memora serve`.
"""
