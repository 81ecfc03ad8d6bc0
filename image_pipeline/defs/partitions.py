"""One dynamic partition per queued prompt, keyed by the prompt's id from the sheet's ``id`` column."""

import dagster as dg

prompt_partitions = dg.DynamicPartitionsDefinition(name="prompts")
