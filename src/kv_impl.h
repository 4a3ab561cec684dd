/* kv: implementation */
