"""Where frames come from: video files, image folders, rosbags, cameras, playlists, the synthetic world."""
