"""Allow-lists of TensorRT-LLM command-line flags (names without the leading dashes).

Copied from TensorRT-LLM's sources (``tensorrt_llm/commands/build.py``,
``tensorrt_llm/plugin/plugin.py``, ``tensorrt_llm/commands/serve.py``; the same names in 1.0-1.2).
A profile's ``trtllm_build`` mapping may only name flags from ``TRTLLM_BUILD_FLAGS`` that medusa-trt
does not set itself (``TRTLLM_BUILD_MANAGED``).
"""

from __future__ import annotations

TRTLLM_BUILD_GENERAL = frozenset(
    {
        "checkpoint_dir",
        "model_config",
        "build_config",
        "model_cls_file",
        "model_cls_name",
        "output_dir",
        "max_batch_size",
        "max_input_len",
        "max_seq_len",
        "max_decoder_seq_len",
        "max_beam_width",
        "max_num_tokens",
        "opt_num_tokens",
        "max_encoder_input_len",
        "max_prompt_embedding_table_size",
        "max_multimodal_len",
        "kv_cache_type",
        "input_timing_cache",
        "output_timing_cache",
        "profiling_verbosity",
        "strip_plan",
        "weight_sparsity",
        "weight_streaming",
        "fast_build",
        "workers",
        "log_level",
        "enable_debug_output",
        "visualize_network",
        "dry_run",
        "monitor_memory",
        # logits
        "logits_dtype",
        "gather_context_logits",
        "gather_generation_logits",
        "gather_all_token_logits",
        # LoRA
        "lora_dir",
        "lora_ckpt_source",
        "lora_target_modules",
        "max_lora_rank",
        # speculative decoding
        "speculative_decoding_mode",
        "max_draft_len",
        # auto parallel
        "auto_parallel",
        "gpus_per_node",
        "cluster_key",
    }
)

TRTLLM_BUILD_PLUGINS = frozenset(
    {
        "bert_attention_plugin",
        "gpt_attention_plugin",
        "gemm_plugin",
        "gemm_swiglu_plugin",
        "fp8_rowwise_gemm_plugin",
        "lora_plugin",
        "dora_plugin",
        "moe_plugin",
        "mamba_conv1d_plugin",
        "nccl_plugin",
        "low_latency_gemm_plugin",
        "low_latency_gemm_swiglu_plugin",
        "gemm_allreduce_plugin",
        "context_fmha",
        "bert_context_fmha_fp32_acc",
        "remove_input_padding",
        "tokens_per_block",
        "use_paged_context_fmha",
        "use_fp8_context_fmha",
        "fuse_fp4_quant",
        "multiple_profiles",
        "paged_state",
        "streamingllm",
        "norm_quant_fusion",
        "reduce_fusion",
        "user_buffer",
        "use_fused_mlp",
        "pp_reduce_scatter",
    }
)

TRTLLM_BUILD_FLAGS = TRTLLM_BUILD_GENERAL | TRTLLM_BUILD_PLUGINS

# Older spellings a profile may still use; medusa-trt emits the current flag instead. trtllm-build 1.x
# documents `--paged_kv_cache` as deprecated ("equivalent to --kv_cache_type paged") and warns on it;
# `--kv_cache_type {continuous,paged,disabled}` is accepted by every release from 1.0 to 1.2.
TRTLLM_BUILD_DEPRECATED: dict[str, tuple[str, dict[str, str]]] = {
    "paged_kv_cache": ("kv_cache_type", {"enable": "paged", "disable": "continuous"}),
}

# Flags medusa-trt derives from other profile sections or the command line: naming them in
# `trtllm_build` would give two sources for one value.
TRTLLM_BUILD_MANAGED: dict[str, str] = {
    "checkpoint_dir": "the converted checkpoint (build --checkpoint)",
    "model_config": "the converted checkpoint (build --checkpoint)",
    "output_dir": "build --output",
    "max_batch_size": "limits.max_batch_size",
    "max_input_len": "limits.max_input_len",
    "max_seq_len": "limits.max_seq_len",
    "max_decoder_seq_len": "limits.max_seq_len",
    "max_num_tokens": "limits.max_num_tokens",
    "workers": "parallelism (medusa-trt passes --workers = tp x pp)",
    "speculative_decoding_mode": "medusa (always `medusa` when heads are given)",
    "max_draft_len": "medusa.max_draft_len",
}

TRTLLM_SERVE_FLAGS = frozenset(
    {
        "tokenizer",
        "custom_tokenizer",
        "host",
        "port",
        "backend",
        "custom_module_dirs",
        "log_level",
        "max_beam_width",
        "max_batch_size",
        "max_num_tokens",
        "max_seq_len",
        "tensor_parallel_size",
        "tp_size",
        "pipeline_parallel_size",
        "pp_size",
        "context_parallel_size",
        "cp_size",
        "moe_expert_parallel_size",
        "ep_size",
        "moe_cluster_parallel_size",
        "cluster_size",
        "gpus_per_node",
        "free_gpu_memory_fraction",
        "kv_cache_free_gpu_memory_fraction",
        "num_postprocess_workers",
        "trust_remote_code",
        "revision",
        "config",
        "extra_llm_api_options",
        "reasoning_parser",
        "tool_parser",
        "metadata_server_config_file",
        "server_role",
        "fail_fast_on_attention_window_too_large",
        "otlp_traces_endpoint",
        "disagg_cluster_uri",
        "enable_chunked_prefill",
        "media_io_kwargs",
        "chat_template",
    }
)


def closest(name: str, choices: frozenset[str] | set[str]) -> str | None:
    """The most similar allowed name, for a 'did you mean' hint."""
    import difflib

    match = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.6)
    return match[0] if match else None
