"""Agent RL (`minimind agent-rl`): GRPO on multi-turn tool-using rollouts.

One optimizer step, as GRPO's (this stage subclasses it and reuses its loss, reference model,
group advantages and resume state), except how a batch is made:
1. take B prompts from the `rl` loader (conversations whose system message, or record, carries
   `tools`, the last assistant turn dropped; references from `gt` or `answer`; the prompt ids in
   the `--thinking` mode as GRPO makes them) and start G rollouts of
   each; all B*G advance together through the agent loop (`agent.run_agents` with
   `agent.engine_token_model`: one batched `Engine.generate` per turn for every unfinished
   rollout), which executes the tool calls with the built-in registry (`--tools`) until an
   answer, a malformed call, `--max-turns` replies, or the context is full;
2. score each rollout with the agent rule rewards (`--rewards`, `rewards.agent_reward_terms`):
   correct final answer, well-formed calls, valid function names and arguments, and penalties
   for unfinished rollouts and repetition; advantages are `losses.group_advantages` over the G
   rollouts of a prompt;
3. the training row of a rollout is its token history exactly as sampled (`AgentRun.segments`):
   labels are the generated ids and IGNORE_INDEX everywhere else, so the tool results and template
   text the loop appended carry neither loss nor KL (GRPO's loss masks on labels).

Sampling seeds depend on the run seed, the rollout counter, the rollout and the turn only, so a
resumed run resamples exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ...agent import AgentRun, engine_token_model, run_agents
from ...config import IGNORE_INDEX
from ...errors import UserError
from ...infer import Engine, SamplingParams
from ...tools import ToolRegistry, builtin_tools
from ..config import knob
from ..losses import group_advantages
from ..rewards import AgentRewards, build_agent_rewards
from .base import TrainContext, step_seed
from .grpo import GRPOConfig, GRPOStage


@dataclass
class AgentRLConfig(GRPOConfig):
    max_new_tokens: int = knob(96, "token budget of each model reply (each turn)")
    max_turns: int = knob(4, "model replies per rollout before it ends as unfinished (turn_limit)")
    tools: str = knob("", "comma-separated built-in tools the loop executes (default: all of them)")
    rewards: str = knob("correct:1,wellformed:0.2,valid:0.2,unfinished:0.5,repetition:0.5",
                        "agent reward terms name[:weight]: correct, wellformed, valid, unfinished, repetition[@n]")
    thinking: bool = knob(False, "generation prompts open a <think> block (off: an empty block, as tool SFT data)")

    def build_reward_fn(self) -> AgentRewards:
        return build_agent_rewards(self.rewards)

    def validate(self) -> None:
        super().validate()
        if self.max_turns < 1:
            raise UserError(f"--max-turns must be at least 1, got {self.max_turns}")
        self.registry()  # unknown tool names fail before any model loads

    def registry(self) -> ToolRegistry:
        tools = builtin_tools()
        names = [n.strip() for n in self.tools.split(",") if n.strip()]
        unknown = [n for n in names if n not in tools]
        if unknown:
            raise UserError(f"--tools: unknown tool(s) {', '.join(unknown)}; built-in: {', '.join(tools.names)}")
        return ToolRegistry(tools.tools[n] for n in names) if names else tools


def rollout_rows(runs: list[AgentRun], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) [N, T] of token-level runs, right-padded: labels are the generated
    ids where a segment is trainable and IGNORE_INDEX on the prompt, the observations and the padding."""
    T = max(len(r.ids) for r in runs)
    ids = torch.full((len(runs), T), pad_id, dtype=torch.long)
    labels = torch.full((len(runs), T), IGNORE_INDEX, dtype=torch.long)
    for i, run in enumerate(runs):
        pos = 0
        for seg, trainable in run.segments:
            ids[i, pos : pos + len(seg)] = torch.tensor(seg, dtype=torch.long)
            if trainable:
                labels[i, pos : pos + len(seg)] = torch.tensor(seg, dtype=torch.long)
            pos += len(seg)
    return ids, labels


def references(answer: str | None, gt: list | None) -> list[str]:
    """Expected answers of a record: upstream's `gt` list when present, else its `answer`."""
    if gt:
        return [str(g) for g in gt]
    return [answer] if answer else []


class AgentRLStage(GRPOStage):
    name = "agent-rl"
    help = "agent RL: GRPO on multi-turn tool-using rollouts (the loop executes the tools); needs --init"
    order = 65
    config_class = AgentRLConfig

    def __init__(self, config: AgentRLConfig) -> None:
        super().__init__(config)
        self.tool_registry = config.registry()

    def rollout(self, raw: dict[str, Any], ctx: TrainContext, count: int) -> dict[str, Any]:
        """Run G agent rollouts per prompt, score them, and build the training tensors."""
        cfg, tok, model, G = self.config, ctx.tokenizer, ctx.model, self.config.group_size
        convs = [m for m in raw["messages"] for _ in range(G)]
        # The loader's prompts (tools from the system message or the record, thinking on), in
        # the configured thinking mode: the exact ids GRPO would sample from.
        prompts = [self._mode_prompt(tok, p) for p in raw["prompt_ids"] for _ in range(G)]
        refs = [references(a, g) for a, g in zip(raw["answers"], raw.get("gt") or [None] * len(raw["answers"]))
                for _ in range(G)]

        def params(i: int, turn: int) -> SamplingParams:
            return SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                  seed=step_seed(cfg.seed, count, i, turn))

        was_training = model.training
        with torch.no_grad(), ctx.autocast():
            engine = Engine(model, tok, max_batch_size=len(convs))  # Engine sets eval()
            runs = run_agents(engine_token_model(engine, params, thinking=cfg.thinking), convs,
                              self.tool_registry, cfg.max_turns, prompt_ids=prompts)
        model.train(was_training)

        texts = [r.generated_texts(tok) for r in runs]
        totals, parts = self.reward_fn.score([(r.messages, r.finish, t) for r, t in zip(runs, texts)], refs,
                                             self.tool_registry)
        rewards = torch.tensor(totals, dtype=torch.float32)
        advantages = group_advantages(rewards, G, scale=cfg.scale_advantages)
        ids, labels = rollout_rows(runs, tok.pad_id)
        n = len(runs)
        metrics = {"reward": float(rewards.mean()),
                   "reward_std": float(rewards.view(-1, G).std(1, correction=0).mean()),
                   "completion_len": sum(len(s) for r in runs for s, t in r.segments if t) / n,
                   "turns": sum(r.turns for r in runs) / n, "tool_calls": sum(r.tool_calls for r in runs) / n,
                   **{f"finish/{f}": sum(r.finish == f for r in runs) / n
                      for f in ("answer", "malformed", "turn_limit", "context")},
                   **{f"reward/{name}": sum(v) / len(v) for name, v in parts.items()}}
        return {"input_ids": ids, "labels": labels, "advantages": advantages, "metrics": metrics,
                "texts": ["\n".join(t) for t in texts]}


STAGE = AgentRLStage
