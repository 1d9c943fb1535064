"""MCP resources computed from the installed vLLM-Omni at read time (cached): support tables, flags, recipes."""

import json

from mcp.server.mcpserver import Context, MCPServer

from omnitune.resources.guide import FLOWCHART, check_recipes
from omnitune.resources.render import support_markdown
from omnitune.server.state import in_thread, state_of
from omnitune.tools.capabilities import inspect_model, installed_serve_flags, support_table


def _dump(model) -> str:
    return model.model_dump_json(indent=1)


def _recipes(settings) -> str:
    table = support_table(settings)
    support = {r.pipeline_class: {k: m.status for k, m in r.methods.items()} for r in table.rows}
    return json.dumps({"vllm_omni_version": table.vllm_omni_version,
                       "recipes": check_recipes(installed_serve_flags(settings), support)}, indent=1)


# Static resources cannot receive the Context (they need omnitune's settings), so the resources computed from
# the installed vLLM-Omni are templates with one optional query variable: `omnitune://support` still matches.
Refresh = str | None


def register(mcp: MCPServer) -> None:
    @mcp.resource("omnitune://support{?refresh}", mime_type="application/json", title="Support table (JSON)")
    async def support(ctx: Context, refresh: Refresh = None) -> str:
        """Every registered pipeline of the installed vLLM-Omni: method -> supported/unsupported/rejected/unknown."""
        return _dump(await in_thread(support_table, state_of(ctx).settings))

    @mcp.resource("omnitune://support.md{?refresh}", mime_type="text/markdown", title="Support table (markdown)")
    async def support_md(ctx: Context, refresh: Refresh = None) -> str:
        """The support table as a markdown table."""
        return support_markdown(await in_thread(support_table, state_of(ctx).settings))

    @mcp.resource("omnitune://support/{pipeline}", mime_type="application/json", title="One model's capabilities")
    async def support_one(pipeline: str, ctx: Context) -> str:
        """The capability report (with evidence) of one pipeline class, e.g. omnitune://support/QwenImagePipeline."""
        return _dump(await in_thread(inspect_model, state_of(ctx).settings, pipeline))

    @mcp.resource("omnitune://serve-flags{?refresh}", mime_type="application/json", title="Serve flags")
    async def serve_flags(ctx: Context, refresh: Refresh = None) -> str:
        """Every option `vllm serve MODEL --omni` accepts in the installed version (see how it is derived)."""
        settings = state_of(ctx).settings
        flags = await in_thread(installed_serve_flags, settings)
        report = await in_thread(support_table, settings)
        from omnitune.tools.capabilities.flags import describe  # the ONE catalogue: types, choices, switches
        return json.dumps({"vllm_omni_version": report.vllm_omni_version, "flags": sorted(flags),
                           "catalogue": describe(flags)}, indent=1)

    @mcp.resource("omnitune://recipes{?refresh}", mime_type="application/json", title="Recipes of the guide")
    async def recipes(ctx: Context, refresh: Refresh = None) -> str:
        """Recipes A-G of the guide with their `vllm serve` commands, checked against the installed flags/support."""
        return await in_thread(_recipes, state_of(ctx).settings)

    @mcp.resource("omnitune://flowchart", mime_type="application/json", title="Decision flowchart")
    async def flowchart() -> str:
        """The guide's decision flowchart: baseline -> lossless -> (lossy with a quality gate)."""
        return json.dumps(FLOWCHART, indent=1)
