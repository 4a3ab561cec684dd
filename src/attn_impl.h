/* attn: implementation */
