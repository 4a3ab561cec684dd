/* tree: implementation */
