/* beam: implementation */
